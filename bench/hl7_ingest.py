"""HL7 v2 ingest over MLLP: the gateway end to end beside an ACK-only server (the limit).

    python bench/hl7_ingest.py [--messages N] [--databases sqlite,postgresql]
                               [--out docs/benchmarks.md]

In one run, for each receiver and for 1 and 8 MLLP connections (each connection strictly
synchronous: send, wait for the ACK, send the next), it sends ORU^R01 lab results and reports
messages/s, p50/p99 ACK latency and the ACK codes:

- the limit: a minimal asyncio server (in a subprocess of this script) that answers every frame
  with a fixed AA ACK without parsing anything: what the client and loopback TCP can do;
- the gateway: a real ``yilian serve`` (``python -m gateway.cli serve``) on a fresh data dir with
  ``yilian demo`` loaded (so XINGFU_THC is a registered sender), on SQLite and on a fresh
  PostgreSQL database ``yilian_bench_<random>`` that is dropped afterwards.

Every gateway ACK must be AA and echo the message's MSH-10, and the archive must hold every
message sent, or the run is flagged INVALID. Only 127.0.0.1 is used; every socket has a timeout;
subprocesses are always stopped. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import secrets
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.demo import resident_id  # noqa: E402  (after the path is set)

HOST = "127.0.0.1"
SECTION = "## HL7 v2 ingest (bench/hl7_ingest.py)"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SB, EB, CR = b"\x0b", b"\x1c", b"\r"
FIXED_ACK = (
    b"\x0bMSH|^~\\&|LIMIT||BS-240|XINGFU_THC|20261008093000||ACK^R01^ACK|LIMIT-1|P|2.5.1\r"
    b"MSA|AA|LIMIT-1\r\x1c\r"
)

# -- the workload: a township lab's chemistry analyzer ---------------------------------------------

# (family, given, sex, birth date, sequence) -- the sequence's last digit is odd for men
PATIENTS = [
    ("王", "秀英", "F", "1952-03-14", "042"),
    ("李", "建国", "M", "1948-11-02", "017"),
    ("陈", "晓明", "M", "2015-09-30", "131"),
    ("张", "桂兰", "F", "1960-07-21", "086"),
    ("刘", "强", "M", "1975-05-09", "053"),
    ("杨", "淑珍", "F", "1956-01-23", "204"),
    ("赵", "德福", "M", "1944-12-08", "219"),
    ("黄", "玉梅", "F", "1969-04-17", "228"),
    ("周", "志刚", "M", "1982-08-30", "235"),
    ("吴", "春花", "F", "1958-02-11", "246"),
    ("徐", "海涛", "M", "1990-10-05", "251"),
    ("孙", "凤英", "F", "1949-06-27", "262"),
    ("马", "建华", "M", "1966-03-03", "277"),
    ("朱", "丽娟", "F", "1973-09-14", "288"),
    ("胡", "长生", "M", "1938-07-19", "293"),
    ("郭", "翠兰", "F", "1962-11-29", "304"),
    ("何", "永平", "M", "1955-05-16", "311"),
    ("高", "秋菊", "F", "1987-12-24", "322"),
    ("林", "国栋", "M", "1971-01-07", "339"),
    ("罗", "桂芳", "F", "1964-08-02", "348"),
]
AREA = "411325"
# (code, name, value type, values to cycle through, unit, reference range)
TESTS = [
    ("GLU", "葡萄糖", "NM", ("5.6", "6.4", "4.8", "7.9"), "mmol/L", "3.9-6.1"),
    ("ALT", "丙氨酸氨基转移酶", "NM", ("23", "41", "18", "56"), "U/L", "7-40"),
    ("CREA", "肌酐", "NM", ("76", "98", "64", "121"), "umol/L", "57-111"),
    ("UREA", "尿素", "NM", ("5.1", "6.8", "4.2", "8.9"), "mmol/L", "2.9-8.2"),
    ("TC", "总胆固醇", "NM", ("4.6", "5.8", "5.1", "6.3"), "mmol/L", "2.8-5.2"),
    ("HBSAG", "乙肝表面抗原", "ST", ("阴性", "阴性", "阴性", "阳性"), "", "阴性"),
]
NOTES = ("标本轻度溶血，结果仅供参考", "空腹采血", "请结合临床", "复查结果")


def _flag(value: str, normal: str) -> str:
    if "-" not in normal:
        return "N" if value == normal else "A"
    low, high = (float(x) for x in normal.split("-"))
    number = float(value)
    return "L" if number < low else ("H" if number > high else "N")


def build_message(n: int, tag: str) -> tuple[str, bytes]:
    """Message number ``n`` of this run: (control ID, MLLP frame). Patients cycle over 20;
    two consecutive results of a patient share a visit (the Encounter is matched)."""
    family, given, sex, birth, seq = PATIENTS[n % len(PATIENTS)]
    control = f"{tag}{n:07d}"
    stamp = dt.datetime(2026, 10, 8, 8, 0) + dt.timedelta(seconds=37 * n)
    when = stamp.strftime("%Y%m%d%H%M%S")
    reported = (stamp + dt.timedelta(minutes=25)).strftime("%Y%m%d%H%M%S")
    rid = resident_id(AREA, birth, seq)
    mrn = f"XF{seq}{birth[2:4]}"
    visit = f"MZ{tag}{n % len(PATIENTS):02d}{n // (2 * len(PATIENTS)):05d}"
    sample = f"S{tag}{n:07d}"
    segments = [
        f"MSH|^~\\&|BS-240|XINGFU_THC|YILIAN|COUNTY_HOSP|{when}||ORU^R01^ORU_R01|{control}|P|"
        "2.5.1||||||UNICODE UTF-8",
        f"PID|1||{rid}^^^&2.16.156.10011.1.3&ISO^NNCHN~{mrn}^^^XINGFU_THC^MR||{family}^{given}||"
        f"{birth.replace('-', '')}|{sex}|||幸福镇幸福村{n % 9 + 1}组^^示范市^示范省^^CN||"
        f"1390377{n % len(PATIENTS):04d}",
        f"PV1|1|O|检验科^^^XINGFU_THC||||doctor-xingfu^李^卫民||||||||||||{visit}",
        f"OBR|1|{sample}|{sample}|CHEM^生化常规^L|||{when}|||||||||||||||{reported}|||F",
    ]
    for i, (code, name, vtype, values, unit, normal) in enumerate(TESTS, start=1):
        value = values[(n // len(PATIENTS) + i) % len(values)]
        normal_range = normal if vtype == "NM" else ""  # the gateway maps OBX-7 for numbers only
        segments.append(
            f"OBX|{i}|{vtype}|{code}^{name}^L||{value}|{unit}|{normal_range}|"
            f"{_flag(value, normal)}|||F"
        )
    segments.append(f"NTE|1||{NOTES[n % len(NOTES)]}")
    payload = ("\r".join(segments) + "\r").encode("utf-8")
    return control, SB + payload + EB + CR


# -- the limit: an ACK-only MLLP server ------------------------------------------------------------


async def _ack_server() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tail = b""
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), 60)
                if not data:
                    return
                data = tail + data
                count = data.count(EB + CR)
                tail = data[-1:]
                if count:
                    writer.write(FIXED_ACK * count)
                    await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# -- the client ------------------------------------------------------------------------------------


@dataclass
class Result:
    receiver: str
    database: str
    connections: int
    messages: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    warmup_codes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    background: float = -1.0  # CPU busy with other work just before the configuration
    others: float = -1.0  # share of the CPUs used by other work during the configuration
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds, warm-up included
    wall: float = 0.0  # seconds the CPU was measured over
    acked_before: int = 0  # ACKs received in attempts discarded for other work
    codes_before: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        return ordered[index] * 1000

    @property
    def other(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "AA")

    @property
    def valid(self) -> bool:
        bad_warmup = sum(
            n
            for c in (self.warmup_codes, self.codes_before)
            for code, n in c.items()
            if code != "AA"
        )
        return not self.errors and not self.other and not bad_warmup and bool(self.messages)


_MSA = re.compile(rb"(?:^|\r)MSA\|([^|\r]*)\|?([^|\r]*)")


def _ack_code(ack: bytes, control: str | None) -> str:
    found = _MSA.search(ack)
    if not found:
        return "no-MSA"
    code = found.group(1).decode("ascii", "replace")
    if control is not None and found.group(2).decode("ascii", "replace") != control:
        return f"{code}(MSA-2 mismatch)"
    return code


def _exchange(sock: socket.socket, frame: bytes) -> bytes:
    sock.sendall(frame)
    buffer = b""
    while not buffer.endswith(EB + CR):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the ACK was complete")
        buffer += chunk
    return buffer


def run_clients(
    port: int,
    warmup: list[tuple[str, bytes]],
    measured: list[tuple[str, bytes]],
    connections: int,
    result: Result,
    *,
    check_control: bool,
    timeout: float,
    between=None,  # type: ignore[no-untyped-def]
) -> None:
    """Each connection in its own thread: connect, warm up, wait for all (and ``between()``),
    then measure."""
    warmed = threading.Barrier(connections + 1, timeout=timeout * 4)
    barrier = threading.Barrier(connections + 1, timeout=timeout * 4)
    lock = threading.Lock()
    ends: list[float] = []

    def one(k: int) -> None:
        mine_warm, mine = warmup[k::connections], measured[k::connections]
        latencies: list[float] = []
        codes: Counter[str] = Counter()
        try:
            with socket.create_connection((HOST, port), timeout=timeout) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(timeout)
                for control, frame in mine_warm:
                    code = _ack_code(_exchange(sock, frame), control if check_control else None)
                    with lock:
                        result.warmup_codes[code] += 1
                warmed.wait()
                barrier.wait()
                clock = time.perf_counter
                for control, frame in mine:
                    start = clock()
                    ack = _exchange(sock, frame)
                    latencies.append(clock() - start)
                    codes[_ack_code(ack, control if check_control else None)] += 1
                end = clock()
        except (OSError, threading.BrokenBarrierError) as exc:
            warmed.abort()
            barrier.abort()
            with lock:
                result.errors.append(f"connection {k}: {type(exc).__name__}: {exc}")
            return
        finally:
            with lock:
                result.latencies.extend(latencies)
                result.codes.update(codes)
        with lock:
            ends.append(end)

    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(connections)]
    for thread in threads:
        thread.start()
    try:
        warmed.wait()
        if between is not None:
            between()
        barrier.wait()
        start = time.perf_counter()
    except threading.BrokenBarrierError:
        start = time.perf_counter()
    deadline = time.monotonic() + timeout * (len(measured) + len(warmup) + 10)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            result.errors.append("a client thread did not finish in time")
    result.messages = len(result.latencies)
    result.seconds = (max(ends) - start) if ends else 0.0


# -- subprocesses ----------------------------------------------------------------------------------


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of all CPUs busy over ``seconds`` (from /proc/stat), or -1 if unknown."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields[:8]), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return -1.0
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (at most ``max_wait`` seconds) until other work leaves the CPUs nearly idle."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy(2.0)
    while busy > threshold and time.monotonic() < deadline:
        print(f"  waiting for a quiet machine: CPUs {busy:.0%} busy with other work", flush=True)
        time.sleep(10)
        busy = cpu_busy(2.0)
    return busy


class CpuMeter:
    """CPU time over an interval: the machine's, and ours (this script, the receiver process
    with its child processes (the gateway's HL7 workers), the PostgreSQL server's processes);
    the rest is other work sharing the machine."""

    def __init__(self, receiver_pid: int | None) -> None:
        self.client = os.getpid()
        self.receiver = receiver_pid
        self.pids = [self.client] + ([receiver_pid] if receiver_pid else [])
        self.split: dict[str, float] = {}  # CPU seconds of client, receiver, postgres
        self.wall = 0.0

    @staticmethod
    def _system() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields[:8]), sum(fields[:8]) - fields[3] - fields[4]  # total, busy

    def _ours(self) -> dict[int, int]:
        """CPU ticks by pid of our processes; the receiver's children count as the receiver."""
        self.children: set[int] = getattr(self, "children", set())
        pids = set(self.pids)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "comm").read_text().strip() == "postgres":
                        pids.add(int(entry.name))
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if self.receiver and int(stat[1]) == self.receiver:
                        self.children.add(int(entry.name))
                except (OSError, IndexError, ValueError):
                    continue
        out = {}
        for pid in pids | self.children:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[pid] = int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, IndexError, ValueError):
                continue
        return out

    def start(self) -> None:
        self._wall = time.monotonic()
        try:
            self._start: tuple[tuple[int, int], dict[int, int]] | None = (
                self._system(),
                self._ours(),
            )
        except (OSError, ValueError):
            self._start = None

    def stop(self) -> float:
        """The share of all CPUs used by other work since start (-1 if unknown)."""
        if self._start is None:
            return -1.0
        try:
            (total1, busy1), ours1 = self._system(), self._ours()
        except (OSError, ValueError):
            return -1.0
        (total0, busy0), ours0 = self._start
        used = {pid: v - ours0.get(pid, 0) for pid, v in ours1.items()}
        tick = os.sysconf("SC_CLK_TCK")
        self.wall = time.monotonic() - self._wall
        self.split = {
            "client": used.get(self.client, 0) / tick,
            "receiver": sum(
                v for pid, v in used.items() if pid == self.receiver or pid in self.children
            )
            / tick,
            "postgres": sum(
                v for pid, v in used.items() if pid not in self.pids and pid not in self.children
            )
            / tick,
        }
        return max(0.0, (busy1 - busy0 - sum(used.values())) / max(1, total1 - total0))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class Gateway:
    """A ``yilian serve`` on a fresh data dir (and the given database), demo loaded."""

    def __init__(self, workdir: Path, database_url: str, code: Path) -> None:
        self.workdir = workdir
        self.code = code
        self.http_port = free_port()
        self.mllp_port = free_port()
        self.env = {
            **os.environ,
            "YILIAN_DATA_DIR": str(workdir / "data"),
            "YILIAN_DATABASE_URL": database_url,
            "YILIAN_HTTP_PORT": str(self.http_port),
            "YILIAN_MLLP_PORT": str(self.mllp_port),
            "YILIAN_HTTP_HOST": HOST,
            "PYTHONPATH": str(code),
        }
        self.env.pop("YILIAN_CONFIG", None)
        self.log_path = workdir / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            cwd=self.code,
            env=self.env,
            capture_output=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"yilian {' '.join(args)} failed: {done.stderr.decode(errors='replace')[-2000:]}"
            )
        return done.stdout.decode()

    def settings(self) -> str:
        """The settings the gateway runs with that matter here (as its own code reads them)."""
        code = (
            "from gateway.settings import load_settings; s = load_settings(); "
            "print(f'log level {s.log_level}, SQLite synchronous={s.sqlite_synchronous}, '"
            "f'{s.ingest_threads} ingest threads, '"
            "f'{getattr(s, \"resolved_dicom_processes\", 1)} DICOM processes')"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=self.code,
            env=self.env,
            capture_output=True,
            timeout=60,
        )
        return done.stdout.decode().strip() or "?"

    def start(self, timeout: float = 90) -> None:
        self.cli("demo")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve"],
                cwd=self.code,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{self.http_port}/readyz"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"yilian serve exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"yilian serve was not ready within {timeout:g} s: {self.log_tail()}")

    def stop(self) -> None:
        stop(self.process)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def log_summary(self) -> tuple[Counter[str], list[str]]:
        """Log lines by level, and the first few WARNING/ERROR/CRITICAL messages."""
        levels: Counter[str] = Counter()
        bad: list[str] = []
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return levels, bad
        for line in lines:
            try:
                record = json.loads(line)
                level, text = record.get("level", "?"), record.get("message", "")
            except (ValueError, AttributeError):
                level, text = "unstructured", line
            levels[level] += 1
            if level not in ("INFO", "DEBUG") and len(bad) < 5:
                bad.append(f"{level}: {text}"[:300])
        return levels, bad

    def archived(self) -> dict[str, int]:
        counts = {}
        for outcome in ("accepted", "accepted-with-warnings", "rejected", "failed"):
            out = self.cli("hl7", "list", "--outcome", outcome, "--limit", "1")
            counts[outcome] = int(out.split()[0])
        return counts


def create_pg_database(admin_url: str) -> tuple[str, str, str, bool]:
    """(database name, its SQLAlchemy URL, server version, autovacuum on) of a fresh
    database."""
    import psycopg

    name = f"yilian_bench_{secrets.token_hex(4)}"
    plain = admin_url.replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        autovacuum = conn.execute("SHOW autovacuum").fetchone()[0] == "on"  # type: ignore[index]
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    return name, url, version, autovacuum


def analyze_pg_database(url: str) -> None:
    """ANALYZE: fresh statistics, and the plans the gateway's connections cached are made again
    (what autovacuum does on a server where it is on)."""
    import psycopg

    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True, connect_timeout=10) as c:
        c.execute("ANALYZE")


def drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(
        admin_url.replace("+psycopg", ""), autocommit=True, connect_timeout=10
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the run ---------------------------------------------------------------------------------------


class Workload:
    """Unique control IDs across the whole run (one gateway sees several configurations)."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3).upper()
        self.next = 0

    def take(self, count: int) -> list[tuple[str, bytes]]:
        out = [build_message(n, self.tag) for n in range(self.next, self.next + count)]
        self.next += count
        return out


def bench_receiver(
    receiver: str,
    database: str,
    port: int,
    args: argparse.Namespace,
    workload: Workload,
    *,
    check_control: bool,
    on_measure=None,  # type: ignore[no-untyped-def]
    receiver_pid: int | None = None,
    between=None,  # type: ignore[no-untyped-def]
) -> list[Result]:
    results = []
    meter = CpuMeter(receiver_pid)

    def once(connections: int) -> Result:
        result = Result(receiver, database, connections)
        result.background = wait_quiet(args.quiet_wait)
        warmup, measured = workload.take(args.warmup), workload.take(args.messages)
        profiler = on_measure(connections) if on_measure else None
        meter.start()
        try:
            run_clients(
                port,
                warmup,
                measured,
                connections,
                result,
                check_control=check_control,
                timeout=args.timeout,
                between=between,
            )
        finally:
            result.others = meter.stop()
            result.cpu, result.wall = meter.split, meter.wall
            if profiler is not None:
                profiler()
        print(
            f"  {receiver:<8} {database:<10} {connections} conn: {result.rate:8.1f} msg/s  "
            f"p50 {result.percentile(50):6.2f} ms  p99 {result.percentile(99):6.2f} ms  "
            f"codes {dict(result.codes)}  errors {len(result.errors)}  "
            f"(other work: {result.background:.0%} of the CPUs before, "
            f"{result.others:.0%} during)",
            flush=True,
        )
        return result

    def one_round(connections: int) -> tuple[Result, list[Result]]:
        """Measure again while other work disturbed it; keep the least disturbed attempt."""
        attempts = [once(connections)]
        while (
            attempts[-1].others > args.max_other
            and len(attempts) < args.attempts
            and on_measure is None
        ):
            print(
                f"  other work took {attempts[-1].others:.0%} of the CPUs: measuring again",
                flush=True,
            )
            attempts.append(once(connections))
        kept = min(attempts, key=lambda a: a.others)
        return kept, [a for a in attempts if a is not kept]

    for connections in args.connections:
        rounds: list[Result] = []
        dropped: list[Result] = []
        for _ in range(1 if on_measure else args.rounds):
            kept, others = one_round(connections)
            rounds.append(kept)
            dropped += others
        result = sorted(rounds, key=lambda r: r.rate)[len(rounds) // 2]  # the median round
        for other in [*rounds, *dropped]:  # their messages were archived; their ACKs count
            if other is result:
                continue
            result.acked_before += other.messages + sum(other.warmup_codes.values())
            result.codes_before.update(other.codes)
            result.codes_before.update(other.warmup_codes)
            result.errors.extend(other.errors)
        if len(rounds) > 1:
            result.notes.append(
                f"{connections} connection(s): median of {len(rounds)} rounds ("
                + ", ".join(f"{r.rate:,.0f}/s" for r in rounds)
                + ")"
            )
        if dropped:
            result.notes.append(
                f"{connections} connection(s): {len(dropped)} measurement(s) repeated because "
                f"other work used more than {args.max_other:.0%} of the CPUs ("
                + ", ".join(f"{d.rate:,.0f}/s with {d.others:.0%}" for d in dropped)
                + ")"
            )
        worst = max(r.others for r in rounds)
        result.others = worst  # the table shows the most disturbed round kept
        if result.cpu and result.receiver == "gateway":
            sent = result.messages + sum(result.warmup_codes.values())
            per = {k: v / max(1, sent) * 1000 for k, v in result.cpu.items()}
            result.notes.append(
                f"{connections} connection(s): CPU per message: gateway (its process and "
                "HL7 workers) "
                f"{per['receiver']:.1f} ms ({result.cpu['receiver'] / result.wall:.0%} of one "
                f"core), PostgreSQL {per['postgres']:.1f} ms, client {per['client']:.1f} ms"
            )
        results.append(result)
    return results


def bench_limit(args: argparse.Namespace, workload: Workload) -> list[Result]:
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--ack-server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        ready = threading.Event()
        port_box: list[int] = []

        def read_port() -> None:
            line = process.stdout.readline()  # type: ignore[union-attr]
            if line.strip().isdigit():
                port_box.append(int(line))
            ready.set()

        threading.Thread(target=read_port, daemon=True).start()
        if not ready.wait(30) or not port_box:
            raise RuntimeError("the ACK-only server did not start")
        return bench_receiver(
            "limit",
            "-",
            port_box[0],
            args,
            workload,
            check_control=False,
            receiver_pid=process.pid,
        )
    finally:
        stop(process, grace=5)


def py_spy(pid: int, out_dir: Path, name: str, mode: str):  # type: ignore[no-untyped-def]
    """Start ``py-spy record`` (collapsed stacks) on the gateway; the returned function stops
    it with SIGINT, which makes py-spy write its file, and prints the hot spots. Mode "gil":
    only the thread holding the GIL is sampled (the gateway's Python work is bound to one core
    by the GIL); "cpu": every thread py-spy sees running; "wall": every thread, idle too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{name}-{mode}.txt"
    command = ["py-spy", "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
    command += {"gil": ["--gil", "--nonblocking"], "cpu": [], "wall": ["--idle"]}[mode]
    print(f"  profiling: {shlex.join(command)}", flush=True)
    proc = subprocess.Popen(
        [*command, "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(1.0)  # let py-spy attach

    def done() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if raw.exists():
            print(hot_spots(raw), flush=True)
        else:
            print(f"py-spy wrote nothing: {err.decode(errors='replace')[-1000:]}", flush=True)

    return done


_COMPREHENSION = re.compile(r"(\.(?:<locals>\.)?<(?:listcomp|genexpr|dictcomp|setcomp)>)+$")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def hot_spots(raw: Path, top: int = 15) -> str:
    """Self and inclusive shares of py-spy's samples, per function (hottest line named)."""
    self_time: Counter[tuple[str, str]] = Counter()
    self_line: Counter[tuple[str, str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        parsed = []
        for frame in frames:
            match = _FRAME.match(frame)
            func, file, ln = (
                (match["func"], match["file"], match["line"] or "?") if match else (frame, "?", "?")
            )
            for prefix in (str(ROOT) + "/", sys.prefix + "/"):
                file = file.removeprefix(prefix)
            func = _COMPREHENSION.sub("", func)  # a comprehension counts for its function
            parsed.append((func, file, ln))
        if not parsed:
            continue
        func, file, ln = parsed[-1]
        self_time[(func, file)] += n
        self_line[(func, file, ln)] += n
        for key in {(f, fl) for f, fl, _ in parsed}:
            inclusive[key] += n
    if not total:
        return "no samples"

    def hottest(func: str, file: str) -> str:
        lines = [(c, ln) for (f, fl, ln), c in self_line.items() if (f, fl) == (func, file)]
        return max(lines)[1] if lines else "?"

    out = [f"{total} samples; self time:"]
    for (func, file), n in self_time.most_common(top):
        out.append(f"  {n / total:6.1%}  {func}  {file}:{hottest(func, file)}")
    out.append("inclusive time (the function and what it calls):")
    for (func, file), n in inclusive.most_common(top + 10):
        out.append(f"  {n / total:6.1%}  {func}  {file}")
    return "\n".join(out)


def bench_gateway(
    database: str, args: argparse.Namespace, workload: Workload, info: dict[str, str], code: Path
) -> list[Result]:
    pg_name = None
    with tempfile.TemporaryDirectory(prefix="yilian-bench-") as tmp:
        gateway: Gateway | None = None
        try:
            if database == "postgresql":
                pg_name, url, version, autovacuum = create_pg_database(args.pg_url)
                info["PostgreSQL"] = version + ("" if autovacuum else " (autovacuum off)")
            else:
                url = ""
                info["SQLite"] = sqlite3.sqlite_version
            gateway = Gateway(Path(tmp), url, code)
            info.setdefault("gateway settings", gateway.settings())
            gateway.start()
            between = None
            if database == "postgresql" and not autovacuum and not args.no_pg_analyze:
                pg_url = url

                def between() -> None:  # type: ignore[no-redef]
                    analyze_pg_database(pg_url)

            on_measure = None
            if args.profile:
                pid = gateway.process.pid  # type: ignore[union-attr]

                def on_measure(connections: int):  # type: ignore[no-untyped-def]
                    if connections != max(args.connections):
                        return None
                    return py_spy(
                        pid, Path(args.profile), f"{database}-{connections}conn", args.profile_mode
                    )

            results = bench_receiver(
                "gateway",
                database,
                gateway.mllp_port,
                args,
                workload,
                check_control=True,
                on_measure=on_measure,
                receiver_pid=gateway.process.pid,  # type: ignore[union-attr]
                between=between,
            )
            if between is not None:
                results[0].notes.append(
                    "autovacuum is off on this server, so the script runs ANALYZE after each "
                    "warm-up, as autovacuum would (--no-pg-analyze to leave it out: without it "
                    "the statistics stay those of an empty database, plans the gateway's "
                    "connections cached keep scanning search_token sequentially, and every "
                    "message costs more than the one before)"
                )
            gateway.stop()
            levels, bad = gateway.log_summary()
            archived = gateway.archived()
            sent = sum(r.messages + sum(r.warmup_codes.values()) + r.acked_before for r in results)
            stored = archived["accepted"] + archived["accepted-with-warnings"]
            note = (
                f"archive: {archived['accepted']} accepted, "
                f"{archived['accepted-with-warnings']} with warnings, {archived['rejected']} "
                f"rejected, {archived['failed']} failed (messages acknowledged: {sent}); "
                f"serve log lines by level: {dict(levels)}"
            )
            results[-1].notes.append(note)
            results[-1].notes.extend(f"serve log {line}" for line in bad)
            if stored != sent:
                results[-1].errors.append(f"{sent} messages acknowledged but {stored} archived")
            return results
        except Exception as exc:  # report the configuration as skipped, keep going
            log = gateway.log_tail() if gateway else ""
            reason = f"{type(exc).__name__}: {exc}"
            print(f"  gateway {database}: SKIPPED: {reason}\n{log}", file=sys.stderr)
            return [Result("gateway", database, c, skipped=reason[:300]) for c in args.connections]
        finally:
            if gateway is not None:
                gateway.stop()
            if pg_name:
                try:
                    drop_pg_database(args.pg_url, pg_name)
                except Exception as exc:
                    print(f"  could not drop database {pg_name}: {exc}", file=sys.stderr)


# -- the report ------------------------------------------------------------------------------------


def code_state() -> tuple[str, str]:
    """(description, fingerprint) of the code measured: the commit, and a hash of every
    uncommitted change outside bench/ and docs/, so figures can be tied to a tree."""
    import hashlib

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=30)
        return done.stdout.decode(errors="replace")

    try:
        head = git("rev-parse", "--short", "HEAD").strip() or "?"
        changed = [
            line[3:].split(" -> ")[-1]
            for line in git("status", "--porcelain", "--untracked-files=all").splitlines()
        ]
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)", ""
    changed = sorted(p for p in changed if not p.startswith(("bench/", "docs/")))
    digest = hashlib.sha256()
    for path in changed:
        digest.update(path.encode())
        try:
            digest.update((ROOT / path).read_bytes())
        except OSError:
            digest.update(b"(deleted)")
    if not changed:
        return f"commit {head}", head
    print_ = f"{digest.hexdigest()[:12]}"
    return f"commit {head} plus uncommitted changes in {len(changed)} files ({print_})", print_


def snapshot(dest: Path) -> Path:
    """Copy the working tree's files (tracked and untracked, not ignored) to ``dest``: the
    gateway runs from there, so every configuration measures the same code even when the tree
    is edited during the run."""
    import shutil

    try:
        done = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ROOT
    for name in done.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu,
        "Python": platform.python_version(),
        "OS": f"{platform.system()} {platform.release()}",
    }


def table(results: list[Result]) -> str:
    limits = {r.connections: r.rate for r in results if r.receiver == "limit" and r.rate}
    lines = [
        "| receiver | database | connections | messages | messages/s | p50 ms | p99 ms "
        "| AA | other ACK | gateway/limit | other work (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.skipped:
            lines.append(
                f"| {r.receiver} | {r.database} | {r.connections} | skipped: {r.skipped} "
                "| | | | | | | |"
            )
            continue
        ratio = ""
        if r.receiver != "limit" and limits.get(r.connections):
            ratio = f"{r.rate / limits[r.connections]:.2%}"
        flag = "" if r.valid else " **INVALID**"
        lines.append(
            f"| {r.receiver}{flag} | {r.database} | {r.connections} | {r.messages} "
            f"| {r.rate:,.0f} | {r.percentile(50):.2f} | {r.percentile(99):.2f} "
            f"| {r.codes.get('AA', 0)} | {r.other} | {ratio} "
            f"| {r.background:.0%} / {r.others:.0%} |"
        )
    return "\n".join(lines)


def report(
    results: list[Result], args: argparse.Namespace, info: dict[str, str], command: str
) -> str:
    when = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %z")
    out = [
        SECTION,
        "",
        f"Measured {when} with `{command}`.",
        "",
        "Machine: "
        + "; ".join(f"{k} {v}" for k, v in info.items() if k not in ("code", "gateway settings"))
        + ".",
        "",
        f"Code: {info.get('code', '?')}.",
        "",
        f"Workload: ORU^R01 from a township chemistry analyzer (MSH, PID, PV1, OBR, 6 OBX NM/ST, "
        f"NTE; Chinese names, UTF-8, about {len(build_message(0, 'X')[1])} bytes), each with a "
        f"unique MSH-10, 20 patients identified by resident identity number (so every message "
        f"but a patient's first is matched and updates the Patient), two results per visit. "
        f"Per configuration {args.rounds} round(s) of {args.warmup} warm-up messages, then "
        f"{args.messages} measured, over 1 or 8 MLLP connections, each synchronous (send, wait "
        "for the ACK, send the next), TCP_NODELAY on; the table shows the median round (other "
        "work: the most disturbed round). Latency is send-to-complete-ACK at the client. The "
        "client (threads, blocking sockets) runs on the same machine and shares its cores. "
        "'Other work' is the "
        "share of the machine's CPUs used by processes other than this script, the receiver "
        "and PostgreSQL: in the 2 s before the configuration (the script waits, at most "
        "--quiet-wait seconds, for it to fall below 15%) / during it. Figures measured with "
        "other work above a few percent are not comparable.",
        "",
        "- **limit**: an asyncio server in the script answering every frame with a fixed AA "
        "ACK, no parsing: the ceiling of this client and loopback TCP.",
        "- **gateway**: `yilian serve` with default settings "
        f"({info.get('gateway settings', '?')}) on a fresh data dir with `yilian demo` loaded; "
        "on PostgreSQL a fresh database on the local server. One gateway per database serves "
        "the 1-connection configuration, then the 8-connection one.",
        "",
        table(results),
        "",
    ]
    eight = [r for r in results if r.receiver == "gateway" and r.connections == 8 and r.rate]
    if eight:
        verdict = ", ".join(
            f"{r.database} {r.rate:,.0f}/s ({'meets' if r.rate >= 300 else 'below'} the bar)"
            for r in eight
        )
        out += [f"Bar: 300 messages/s end to end with 8 connections (goal 1,000): {verdict}.", ""]
    invalid = [r for r in results if not r.skipped and not r.valid]
    out.append(
        "Validity: every gateway ACK was AA and echoed its MSH-10; the archive holds every "
        "message acknowledged."
        if not invalid
        else "**INVALID run**: "
        + "; ".join(
            f"{r.receiver}/{r.database}/{r.connections}: "
            + "; ".join(r.errors[:3] + [f"codes {dict(r.codes)}, warm-up {dict(r.warmup_codes)}"])
            for r in invalid
        )
    )
    notes = [
        f"- {r.receiver}{'' if r.database == '-' else ' ' + r.database}: {n}"
        for r in results
        for n in r.notes
    ]
    if notes:
        out += ["", *notes]
    return "\n".join(out) + "\n"


def write_section(path: Path, text: str) -> None:
    if path.exists():
        current = path.read_text()
    else:
        current = (
            "# Benchmarks\n\nFigures written by the scripts in `bench/` (see bench/README.md); "
            "each section says when, where and with which command it was measured.\n"
        )
    lines = current.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        updated = current.rstrip("\n") + "\n\n" + text
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        updated = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(updated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="measured, per configuration")
    parser.add_argument("--warmup", type=int, default=50, help="per configuration")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--connections", default="1,8")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="server where a database is made")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per socket wait")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="before each configuration, wait up to this many seconds for other work to leave "
        "the CPUs below 15%% busy (the figure is reported either way)",
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.10,
        help="measure a configuration again when other work used more than this share of the "
        "CPUs during it",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="per configuration; the median is reported"
    )
    parser.add_argument("--attempts", type=int, default=3, help="at most, per round")
    parser.add_argument(
        "--no-pg-analyze",
        action="store_true",
        help="on a server with autovacuum off, do not ANALYZE the database after each warm-up",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the gateway during the largest-connection runs (figures are then not "
        "written to --out)",
    )
    parser.add_argument("--profile-mode", choices=("gil", "cpu", "wall"), default="gil")
    parser.add_argument("--ack-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ack_server:
        asyncio.run(_ack_server())
        return 0
    args.connections = [int(c) for c in args.connections.split(",")]
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    unknown = set(databases) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown database(s): {', '.join(sorted(unknown))}")
    command = shlex.join(["python", "bench/hl7_ingest.py", *sys.argv[1:]])
    info = machine()
    workload = Workload()
    print(f"HL7 ingest benchmark: {args.messages} messages per configuration", flush=True)
    with tempfile.TemporaryDirectory(prefix="yilian-bench-code-") as copy:
        info["code"], _ = code_state()
        code = snapshot(Path(copy))
        if code != ROOT:
            info["code"] += ", run from a copy taken at the start"
        results = bench_limit(args, workload)
        for database in databases:
            results += bench_gateway(database, args, workload, info, code)
    text = report(results, args, info, command)
    print()
    print(text)
    if args.profile:
        print(f"(profiled run: py-spy output in {args.profile}; nothing written to {args.out})")
    elif not args.no_write:
        write_section(args.out, text)
        print(f"written to {args.out}")
    ok = all(r.valid for r in results if not r.skipped)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
