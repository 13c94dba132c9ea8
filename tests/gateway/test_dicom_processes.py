"""`yilian serve` with two DICOM processes on one port: the one beside the gateway's serves
associations and files them into the same record, is started again when it dies, and ends with
the gateway, however the gateway ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.dicom.peers import dcmtk
from tests.dicom.test_scp import copy_with_new_uids, sample
from tests.gateway.test_end_to_end import YILIAN, _free_port, _wait_ready, _yilian, env

pytestmark = pytest.mark.slow
__all__ = ["env"]  # the fixture, used here


@pytest.fixture
def gateway(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`yilian serve` with YILIAN_DICOM_PROCESSES=2, the demo loaded: (process, DICOM port)."""
    port = _free_port()
    env.update(YILIAN_DICOM_PORT=str(port), YILIAN_DICOM_PROCESSES="2")
    assert _yilian(env, "demo").returncode == 0
    with open(tmp_path / "serve.log", "w") as log:
        serve = subprocess.Popen(
            [*YILIAN, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
    try:
        _wait_ready(f"http://127.0.0.1:{env['YILIAN_HTTP_PORT']}", serve)
        yield serve, port
    finally:
        if serve.poll() is None:
            os.kill(serve.pid, signal.SIGCONT)
            serve.kill()
            serve.wait(30)


def dicom_processes(pid: int) -> list[int]:
    """The DICOM processes the gateway ``pid`` started."""
    found = []
    children = [c for t in Path(f"/proc/{pid}/task").iterdir() for c in _children(t)]
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"gateway.dicom_processes" in command:
            found.append(int(child))
    return found


def _children(task: Path) -> list[str]:
    try:
        return (task / "children").read_text().split()
    except FileNotFoundError:  # a thread that ended meanwhile
        return []


def wait_for(check, seconds: float = 20):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s")


def store(port: int, files: list[Path]) -> None:
    done = dcmtk(
        "storescu", "-aet", "XINGFU_CT", "-aec", "YILIAN", "127.0.0.1", str(port), *map(str, files)
    )
    assert done.returncode == 0 and "E:" not in done.stdout + done.stderr, done.stderr


def stored(database: str, table: str = "dicom_instance") -> int:
    engine = create_engine(database)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def ct_copies(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    return copy_with_new_uids(sample("CT_small.dcm"), folder, count)


def test_the_second_process_serves_files_and_is_replaced_when_it_dies(
    gateway: tuple[subprocess.Popen[str], int], env: dict[str, str], tmp_path: Path
) -> None:
    serve, port = gateway
    (worker,) = wait_for(lambda: dicom_processes(serve.pid))
    one = ct_copies(tmp_path / "one", 1)
    os.kill(serve.pid, signal.SIGSTOP)  # the gateway's own process cannot take it
    try:
        store(port, one)
    finally:
        os.kill(serve.pid, signal.SIGCONT)
    assert stored(env["YILIAN_DATABASE_URL"]) == 1

    # four associations at once, over both processes: every instance filed, none quarantined
    batches = [ct_copies(tmp_path / f"b{k}", 5) for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda files: store(port, files), batches))
    assert stored(env["YILIAN_DATABASE_URL"]) == 21
    assert stored(env["YILIAN_DATABASE_URL"], "dicom_quarantine") == 0

    os.kill(worker, signal.SIGKILL)
    (replacement,) = wait_for(
        lambda: [p for p in dicom_processes(serve.pid) if p != worker and alive(p)]
    )
    time.sleep(3)  # it opens the record and starts serving
    os.kill(serve.pid, signal.SIGSTOP)
    try:
        store(port, ct_copies(tmp_path / "again", 1))
    finally:
        os.kill(serve.pid, signal.SIGCONT)
    assert stored(env["YILIAN_DATABASE_URL"]) == 22

    serve.send_signal(signal.SIGTERM)
    assert serve.wait(60) == 0
    assert not alive(replacement)
    with socket.socket() as sock:  # nobody holds the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_the_second_process_ends_when_the_gateway_is_killed(
    gateway: tuple[subprocess.Popen[str], int],
) -> None:
    serve, port = gateway
    (worker,) = wait_for(lambda: dicom_processes(serve.pid))
    serve.kill()
    serve.wait(30)
    wait_for(lambda: not alive(worker))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
