"""Member gateways as real ``yilian serve`` processes, for the two-gateway drills.

A ``Gateway`` is one member's folder: its data folder, its database (a SQLite file, or a
PostgreSQL database of its own when YILIAN_TEST_DATABASE_URL names a server), its settings as
YILIAN_* environment variables and its ports. It is prepared while it is not serving (the
``yilian`` commands in a subprocess, or a ``Context`` in the test's process), then started,
stopped with SIGTERM, killed with SIGKILL and started again on the same data. What it logs goes
to a file; ``tail`` gives its end for a failing test's report.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import Engine, create_engine, func, select

from gateway.demo import DEMO_PASSWORD
from gateway.settings import Settings
from records import outbox
from records.outbox import Entry
from records.schema import dicom_instance, search_token
from teleconsult.messages import REQUEST_KEY_SYSTEM
from tests.conftest import PG_ENV, postgres_database
from tests.tls import TestCA

REPO = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-m", "gateway.cli", "serve"]
YILIAN = [sys.executable, "-m", "gateway.cli"]
# Several `yilian` commands one after another in one process (each as click runs it, with its
# own exit code and output), to spare an interpreter start per command.
COMMANDS = [
    sys.executable,
    "-c",
    """
import json, sys
from click.testing import CliRunner
from gateway.cli import main
runner = CliRunner()
for args in json.loads(sys.argv[1]):
    done = runner.invoke(main, args)
    print(json.dumps({"args": args, "exit": done.exit_code, "output": done.output}))
    if done.exit_code:
        break
""",
]

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def until(what: str, probe: Callable[[], T | None], timeout: float = 60, every: float = 0.1) -> T:
    """Poll ``probe`` until it gives something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@dataclass
class Gateway:
    code: str  # the member's code: XINGFU_THC, CITY_FIRST
    folder: Path
    database_url: str
    ca: TestCA
    dicom_ae: str
    dicom_tls: bool = True  # the DICOM SCP asks for TLS with client certificates
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    # the client id and secret each other member issued to this gateway, by member code
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)
    routing_rules: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _engine: Engine | None = None

    # -- where and how --------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.folder / "var"

    @property
    def log_path(self) -> Path:
        return self.folder / "serve.log"

    @property
    def base(self) -> str:
        return f"https://localhost:{self.http_port}"

    @property
    def fhir_base(self) -> str:
        return f"{self.base}/fhir"

    @property
    def dicom_address(self) -> str:
        return f"dicom{'s' if self.dicom_tls else ''}://{self.dicom_ae}@localhost:{self.dicom_port}"

    @property
    def env(self) -> dict[str, str]:
        cert, key = self.ca.client_files(self.code)
        env = {k: v for k, v in os.environ.items() if not k.startswith("YILIAN_")}
        env.update(
            {
                "YILIAN_DATA_DIR": str(self.data_dir),
                "YILIAN_DATABASE_URL": self.database_url,
                "YILIAN_HTTP_HOST": "127.0.0.1",
                "YILIAN_HTTP_PORT": str(self.http_port),
                "YILIAN_HTTP_TLS_CERT": str(self.ca.server_cert),
                "YILIAN_HTTP_TLS_KEY": str(self.ca.server_key),
                "YILIAN_HTTP_TLS_CLIENT_CA": str(self.ca.ca_cert),
                "YILIAN_MLLP_ENABLED": "false",
                "YILIAN_HL7_WORKERS": "0",
                "YILIAN_DICOM_PORT": str(self.dicom_port),
                "YILIAN_DICOM_AE": self.dicom_ae,
                "YILIAN_CONSORTIUM_TLS_CERT": str(cert),
                "YILIAN_CONSORTIUM_TLS_KEY": str(key),
                "YILIAN_CONSORTIUM_TLS_CA": str(self.ca.ca_cert),
                "YILIAN_PEER_CREDENTIALS": json.dumps(self.credentials),
                "YILIAN_OUTBOX_POLL_SECONDS": "0.2",
                "YILIAN_OUTBOX_RETRY_BASE": "0.5",
                "YILIAN_OUTBOX_RETRY_CAP": "2",
                "YILIAN_OUTBOX_LEASE_SECONDS": "3",
                "YILIAN_LOG_LEVEL": "INFO",
                "TCP_NODELAY": "1",
            }
        )
        if self.dicom_tls:
            env.update(
                {
                    "YILIAN_DICOM_TLS_CERT": str(self.ca.server_cert),
                    "YILIAN_DICOM_TLS_KEY": str(self.ca.server_key),
                    "YILIAN_DICOM_TLS_CLIENT_CA": str(self.ca.ca_cert),
                }
            )
        if self.routing_rules is not None:
            env["YILIAN_ROUTING_RULES"] = str(self.routing_rules)
        return env

    def settings(self) -> Settings:
        """The settings ``yilian serve`` reads from ``env``, for a Context in this process."""
        values: dict[str, Any] = {
            k.removeprefix("YILIAN_").lower(): v
            for k, v in self.env.items()
            if k.startswith("YILIAN_")
        }
        values["peer_credentials"] = json.loads(values["peer_credentials"])
        return Settings(**values)

    # -- commands and the server ----------------------------------------------------------

    def yilian(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``yilian`` command on this gateway's data (an operator at its console)."""
        done = subprocess.run(
            [*YILIAN, *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert done.returncode == 0, (
                f"yilian {' '.join(args)} at {self.code} exited {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done

    def commands(self, *commands: list[str]) -> list[str]:
        """Run ``yilian`` commands in turn in one process; their outputs (each must succeed)."""
        done = subprocess.run(
            [*COMMANDS, json.dumps(commands)],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        for result in results:
            assert result["exit"] == 0, (
                f"yilian {' '.join(result['args'])} at {self.code} exited {result['exit']}:\n"
                f"{result['output']}"
            )
        assert done.returncode == 0 and len(results) == len(commands), done.stderr
        return [str(r["output"]) for r in results]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, wait: bool = True) -> None:
        assert not self.running, f"{self.code} is already serving"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"===== start {self.starts} of {self.code} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                SERVE, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(verify=str(self.ca.ca_cert), timeout=2) as client:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"{self.code}: yilian serve exited with {self.proc.returncode}:\n"
                        + self.tail()
                    )
                try:
                    if client.get(f"{self.base}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.code} was not ready in {timeout:.0f} s")
                time.sleep(0.1)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM (a graceful stop), then SIGKILL if it takes too long; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the process dies wherever it is, as in a power cut."""
        assert self.proc is not None and self.proc.poll() is None, f"{self.code} is not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return f"({self.code}: no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join([f"----- {self.code}: last lines of {self.log_path}", *text[-lines:]])

    # -- talking to it ----------------------------------------------------------------------

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, verify=str(self.ca.ca_cert), timeout=30)

    def login(self, username: str, password: str = DEMO_PASSWORD) -> dict[str, str]:
        """A bearer token by the password grant, as a person's app gets it."""
        with self.client() as api:
            answer = api.post(
                "/auth/token",
                data={"grant_type": "password", "username": username, "password": password},
            )
        assert answer.status_code == 200, (username, answer.text)
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}

    # -- reading its database (beside the running server) -------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.database_url)
        return self._engine

    def outbox(self, **filters: Any) -> list[Entry]:
        return outbox.listing(self.engine, **filters)

    def sop_counts(self, study_uid: str | None = None) -> dict[str, int]:
        """Instances held in the DICOM index, by SOP Instance UID."""
        query = select(dicom_instance.c.sop_uid, func.count()).group_by(dicom_instance.c.sop_uid)
        if study_uid:
            query = query.where(dicom_instance.c.study_uid == study_uid)
        with self.engine.connect() as conn:
            return {uid: n for uid, n in conn.execute(query)}

    def count_by_identifier(self, rtype: str, system: str, value: str) -> int:
        """How many resources of a type carry an identifier (no access rules)."""
        query = select(func.count(func.distinct(search_token.c.res_id))).where(
            search_token.c.res_type == rtype,
            search_token.c.param == "identifier",
            search_token.c.system == system,
            search_token.c.code == value,
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def tasks_for(self, key: str) -> int:
        return self.count_by_identifier("Task", REQUEST_KEY_SYSTEM, key)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


@contextmanager
def database(folder: Path, name: str) -> Iterator[str]:
    """A SQLite file in ``folder``, or a new PostgreSQL database when the suite runs on one."""
    server = os.environ.get(PG_ENV)
    if not server:
        yield f"sqlite:///{folder / f'{name}.db'}"
        return
    with postgres_database(server, f"yilian_{name}") as url:
        yield url


@contextmanager
def gateways(folder: Path, ca: TestCA, *specs: dict[str, Any]) -> Iterator[list[Gateway]]:
    """Gateways (``Gateway`` keyword arguments each, ``code`` first), each with its own folder
    and database; always stopped at the end, and their logs' tails printed when the block
    failed."""
    with ExitStack() as stack:
        made = []
        for spec in specs:
            home = folder / spec["code"].lower()
            home.mkdir(parents=True, exist_ok=True)
            url = stack.enter_context(database(home, spec["code"].lower()))
            made.append(Gateway(folder=home, database_url=url, ca=ca, **spec))
        try:
            yield made
        finally:
            in_parallel(*(gateway.close for gateway in made))
            # pytest shows what a fixture printed only when its test failed
            for gateway in made:
                print(gateway.tail())


def in_parallel(*calls: Callable[[], Any]) -> None:
    """Run independent preparation steps (each member's own commands) side by side."""
    errors: list[BaseException] = []

    def run(call: Callable[[], Any]) -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
