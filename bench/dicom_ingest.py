"""DICOM C-STORE ingest: the gateway beside dcmtk storescp (the limit) and Orthanc (the peer).

    python bench/dicom_ingest.py [--receivers storescp,orthanc,gateway] [--rounds 3]
                                 [--small 500] [--large 40] [--skip-huge]
                                 [--out docs/benchmarks.md] [--no-write]

In one run, each receiver started fresh by the script on 127.0.0.1 (high ports) receives, from
dcmtk ``storescu`` (calling AE XINGFU_CT, TCP_NODELAY=1), over one association and over 4
parallel associations (4 storescu processes, the files split in 4):

- small: ``--small`` copies of pydicom's CT_small.dcm (about 39 KB), 50 per study;
- large: ``--large`` CT images of 2048 x 2048 x 16 bit (about 8.4 MB), 10 per study;
- huge: one Multi-frame Grayscale Word Secondary Capture of 1 GiB of pixel data, once per
  receiver, for its memory use (``--skip-huge`` leaves it out).

Every instance sent carries a fresh SOP Instance UID (and fresh study and series UIDs), so no
receiver ever sees a repeat. The receivers:

- **storescp**: dcmtk ``storescp --fork`` writing files, nothing else: the limit;
  (``storescp-single``, not in the default list: the same in its default single-process mode);
- **orthanc**: Orthanc 1.10 with the PEERS.md configuration (SQLite index): the peer;
- **gateway**: ``yilian serve`` (run from a copy of the working tree taken at the start) on a
  fresh data dir with ``yilian demo`` loaded (which registers XINGFU_CT), SQLite: storage,
  index, Patient matching and ImagingStudy.

For each it reports instances/s and MB/s (wall time of the storescu processes, start to exit),
the receiver's CPU per instance (its process and children, from /proc, including the work it
does after the last response until it is idle) and its peak RSS (sampled every 50 ms). Every
storescu must exit 0 and the receiver must hold every instance sent (storescp: files; Orthanc:
/statistics; gateway: its index), or the run is flagged INVALID (exit status 1). Only
127.0.0.1 is used; subprocesses are always stopped. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import shlex
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hl7_ingest import (  # noqa: E402  (the HL7 bench's helpers: same habits here)
    AREA,
    PATIENTS,
    Gateway,
    code_state,
    free_port,
    machine,
    resident_id,
    snapshot,
    stop,
    wait_quiet,
)

HOST = "127.0.0.1"
SECTION = "## DICOM ingest (bench/dicom_ingest.py)"
CALLING_AE = "XINGFU_CT"
NODELAY = {**os.environ, "TCP_NODELAY": "1"}
RECEIVERS = ("storescp", "orthanc", "gateway")
KNOWN_RECEIVERS = (*RECEIVERS, "storescp-single")
SINGLE = "single"  # small instances, one association (one storescu) each, in turn
SMALL_PER_STUDY = 50
LARGE_PER_STUDY = 10
LARGE_SIDE = 2048
HUGE_SIDE = 512
MB = 1_000_000
MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MF_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def dcmtk(name: str) -> str:
    """The dcmtk program ``name``: /usr/bin first (pynetdicom installs a ``storescu`` of its own
    that may come first on PATH)."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            done = subprocess.run([candidate, "--version"], capture_output=True, timeout=30)
            if b"dcmtk" in done.stdout + done.stderr:
                return candidate
    raise SystemExit(f"dcmtk {name} not found (apt-get install dcmtk)")


STORESCU, STORESCP, ECHOSCU = dcmtk("storescu"), dcmtk("storescp"), dcmtk("echoscu")
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


# -- the workload: a township CT -------------------------------------------------------------------


@dataclass
class Batch:
    kind: str
    files: list[Path]
    nbytes: int
    studies: int


class DataMaker:
    """Instances with fresh UIDs on every call, from templates built once. Studies go to the
    20 residents of the HL7 bench in turn (Chinese names, UTF-8, resident identity number as
    PatientID), so a resident's first study creates the Patient and later ones match it."""

    def __init__(self) -> None:
        import numpy as np
        from pydicom import dcmread
        from pydicom.data import get_testdata_file

        self.np = np
        path = get_testdata_file("CT_small.dcm", download=False)
        if not path:
            raise SystemExit("pydicom's CT_small.dcm is missing (pip install pydicom)")
        small = dcmread(path)
        small.file_meta.TransferSyntaxUID = EXPLICIT_LE
        small.file_meta.ImplementationVersionName = "YILIAN_BENCH"
        small.SpecificCharacterSet = "ISO_IR 192"
        small.InstitutionName = "幸福镇卫生院"
        small.StationName = CALLING_AE
        small.Manufacturer = "Bench"
        small.TimezoneOffsetFromUTC = "+0800"
        small.ReferringPhysicianName = "李^卫民"
        small.StudyDescription = "胸部CT平扫"
        small.SeriesDescription = "胸部 5mm"
        for keyword in ("OtherPatientIDsSequence", "IssuerOfPatientID"):
            if keyword in small:
                delattr(small, keyword)
        self.small = small

        large = copy.deepcopy(small)
        for keyword in ("PixelPaddingValue", "DataSetTrailingPadding"):
            if keyword in large:
                delattr(large, keyword)
        large.Rows = large.Columns = LARGE_SIDE
        large.PixelSpacing = ["0.25", "0.25"]
        large.BitsAllocated, large.BitsStored, large.HighBit = 16, 12, 11
        large.PixelRepresentation = 0
        large.RescaleIntercept, large.RescaleSlope = "-1024", "1"
        large.WindowCenter, large.WindowWidth = "40", "400"
        large.SeriesDescription = "胸部 薄层 0.625mm"
        self.large = large
        rng = np.random.default_rng(20261122)
        y, x = np.ogrid[:LARGE_SIDE, :LARGE_SIDE]
        c = LARGE_SIDE / 2
        image = np.zeros((LARGE_SIDE, LARGE_SIDE), dtype=np.uint16)
        image[((x - c) / (0.44 * LARGE_SIDE)) ** 2 + ((y - c) / (0.34 * LARGE_SIDE)) ** 2 <= 1] = (
            1064
        )
        for dx in (-0.18, 0.18):  # two lungs
            lung = ((x - c - dx * LARGE_SIDE) / (0.13 * LARGE_SIDE)) ** 2 + (
                (y - c) / (0.22 * LARGE_SIDE)
            ) ** 2 <= 1
            image[lung] = 200
        image += rng.integers(0, 60, image.shape, dtype=np.uint16)
        self.large_image = image
        self.studies = 0  # across the run: residents take turns
        self.tag = f"{int(time.time()) % 100000:05d}"

    def _study(self, ds, number: int) -> None:  # type: ignore[no-untyped-def]
        from pydicom.uid import generate_uid

        family, given, sex, birth, seq = PATIENTS[number % len(PATIENTS)]
        ds.PatientName = f"{family}^{given}"
        ds.PatientID = resident_id(AREA, birth, seq)
        ds.PatientSex = sex
        ds.PatientBirthDate = birth.replace("-", "")
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.FrameOfReferenceUID = generate_uid()
        ds.AccessionNumber = f"CT{self.tag}{number:06d}"[:16]
        ds.StudyID = f"{number % 100000}"
        day = dt.date(2026, 10, 8) + dt.timedelta(days=number // 40)
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            setattr(ds, keyword, day.strftime("%Y%m%d"))
        ds.SeriesNumber = 2

    def _instance(self, ds, index: int) -> None:  # type: ignore[no-untyped-def]
        from pydicom.uid import generate_uid

        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = index + 1
        z = -100.0 - 1.25 * index
        ds.ImagePositionPatient = ["-128", "-128", f"{z:.2f}"]
        ds.SliceLocation = f"{z:.2f}"

    def make(self, kind: str, count: int, dest: Path) -> Batch:
        dest.mkdir(parents=True)
        per_study = SMALL_PER_STUDY if kind == "small" else LARGE_PER_STUDY
        ds = self.small if kind == "small" else self.large
        files: list[Path] = []
        nbytes = 0
        studies = 0
        for i in range(count):
            if i % per_study == 0:
                self._study(ds, self.studies)
                self.studies += 1
                studies += 1
            self._instance(ds, i % per_study)
            if kind == "large":
                shifted = self.np.roll(self.large_image, 16 * (i % 64), axis=0)
                ds.PixelData = shifted.tobytes()
            path = dest / f"{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            nbytes += path.stat().st_size
        return Batch(kind, files, nbytes, studies)

    def make_huge(self, dest: Path, mib: int) -> Batch:
        """One Multi-frame Grayscale Word SC of ``mib`` MiB of pixel data, written in 16 MiB
        chunks after the header (never whole in memory)."""
        from pydicom.dataset import Dataset, FileMetaDataset

        np = self.np
        frame_bytes = HUGE_SIDE * HUGE_SIDE * 2
        frames = max(1, mib * MIB // frame_bytes)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MF_WORD_SC
        meta.TransferSyntaxUID = EXPLICIT_LE
        meta.ImplementationVersionName = "YILIAN_BENCH"
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = MF_WORD_SC
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientSex",
            "PatientBirthDate",
            "ReferringPhysicianName",
            "InstitutionName",
            "StationName",
        ):
            setattr(ds, keyword, getattr(self.small, keyword))
        self._study(ds, self.studies)
        self.studies += 1
        ds.SeriesNumber = 1
        self._instance(ds, 0)
        del ds.ImagePositionPatient, ds.SliceLocation, ds.FrameOfReferenceUID
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
        ds.StudyDescription = "大容量多帧测试"
        ds.SeriesDescription = f"{frames} 帧"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063  # FrameTime
        ds.FrameTime = "40"
        ds.Rows = ds.Columns = HUGE_SIDE
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        dest.mkdir(parents=True)
        path = dest / "huge.dcm"
        ds.save_as(path, enforce_file_format=True)
        rng = np.random.default_rng(7)
        per_chunk = 32
        block = rng.integers(0, 4096, (per_chunk, HUGE_SIDE, HUGE_SIDE), dtype=np.uint16).tobytes()
        length = frames * frame_bytes
        with open(path, "ab") as f:
            f.write(struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", length))
            left = frames
            while left:
                n = min(per_chunk, left)
                f.write(block[: n * frame_bytes])
                left -= n
        return Batch("huge", [path], path.stat().st_size, 1)


# -- processes: CPU and memory from /proc ----------------------------------------------------------


def tree(root: int, exclude: int | None = None) -> list[int]:
    """``root`` and its descendants (through /proc/PID/task/TID/children), without the
    subtree of ``exclude``."""
    out = [root]
    seen = {root}
    i = 0
    while i < len(out):
        pid = out[i]
        i += 1
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    children = f.read().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in seen and child != exclude:
                    seen.add(child)
                    out.append(child)
    return out


def tree_ticks(root: int, exclude: int | None = None) -> int:
    """CPU ticks of a process tree: each process's own and those of its children already
    waited for (a child that exits and is reaped moves from the one to the other: each tick
    counts once)."""
    total = 0
    for pid in tree(root, exclude):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            continue
    return total


def tree_rss(pids: list[int]) -> int:
    """Bytes resident, summed over ``pids`` (pages shared between them count for each)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def kernel_ticks() -> int:
    """CPU ticks of the kernel's threads (children of kthreadd: writeback, kswapd, ...)."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[1] == "2" or entry.name == "2":
                    total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                continue
    return total


def system_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), sum(fields[:8]) - fields[3] - fields[4]  # total, busy


class Meter:
    """CPU over an interval: the receiver's tree, ours (this script and the storescu it runs)
    and the machine's; the rest is other work sharing the machine. Meanwhile a thread samples
    the resident memory of the receiver's tree and of the senders every 50 ms."""

    def __init__(self, receiver: int, senders: Callable[[], list[int]]) -> None:
        self.receiver = receiver
        self.senders = senders
        self.me = os.getpid()
        self.peak_rss = 0
        self.sender_peak = 0
        self.rss_before = tree_rss(tree(receiver))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, tree_rss(tree(self.receiver)))
            senders = self.senders()
            if senders:
                self.sender_peak = max(self.sender_peak, tree_rss(senders))
            if self._stop.wait(0.05):
                return

    def start(self) -> None:
        self._wall = time.monotonic()
        self._system = system_ticks()
        self._kernel = kernel_ticks()
        self._receiver = tree_ticks(self.receiver)
        self._ours = tree_ticks(self.me, exclude=self.receiver)
        self._thread.start()

    def stop(self) -> tuple[float, float, float]:
        """(receiver CPU seconds, ours, the share of all CPUs used by other work). The kernel's
        threads are not other work (they write back what the receiver wrote): their share is
        left in ``self.kernel``."""
        self._stop.set()
        self._thread.join(5)
        total1, busy1 = system_ticks()
        kernel = kernel_ticks() - self._kernel
        receiver = tree_ticks(self.receiver) - self._receiver
        ours = tree_ticks(self.me, exclude=self.receiver) - self._ours
        self.wall = time.monotonic() - self._wall
        total0, busy0 = self._system
        span = max(1, total1 - total0)
        self.kernel = kernel / span
        others = max(0.0, (busy1 - busy0 - receiver - ours - kernel) / span)
        return receiver / TICK, ours / TICK, others


def settle(pid: int, limit: float = 120.0) -> float:
    """Seconds until the receiver's tree is idle (under 10% of one core over 0.2 s)."""
    start = time.monotonic()
    last = tree_ticks(pid)
    while time.monotonic() - start < limit:
        time.sleep(0.2)
        now = tree_ticks(pid)
        if now - last <= 0.2 * TICK * 0.10:
            break
        last = now
    return time.monotonic() - start


# -- receivers -------------------------------------------------------------------------------------


class NotAvailable(Exception):
    pass


def echo(port: int, called: str, timeout: int = 5) -> tuple[bool, str]:
    try:
        done = subprocess.run(
            [ECHOSCU, "-to", str(timeout), "-ta", str(timeout), "-aet", CALLING_AE]
            + ["-aec", called, HOST, str(port)],
            env=NODELAY,
            capture_output=True,
            timeout=timeout * 3 + 5,
        )
    except subprocess.TimeoutExpired:
        return False, "echoscu timed out"
    text = (done.stdout + done.stderr).decode(errors="replace").strip()
    return done.returncode == 0, text[-300:]


def wait_echo(port: int, called: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NotAvailable(f"exited with status {process.returncode} before answering C-ECHO")
        ok, last = echo(port, called)
        if ok:
            return
        time.sleep(0.3)
    raise NotAvailable(f"no C-ECHO answer on port {port} within {timeout:g} s ({last})")


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


class Receiver:
    name = "?"
    ae = "?"
    description = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.notes: list[str] = []
        self.log_path = workdir / f"{self.name}.log"
        self.sent_instances = 0
        self.sent_studies = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        raise NotImplementedError

    def count(self) -> int:
        """Instances held now."""
        raise NotImplementedError

    def after_round(self) -> None:
        """Tidy between rounds (outside the measurement)."""

    def stop(self) -> None:
        stop(self.process)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def _popen(self, command: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
            )


class StoreScp(Receiver):
    ae = "STORESCP"

    def __init__(self, workdir: Path, fork: bool) -> None:
        self.fork = fork
        self.name = "storescp" if fork else "storescp-single"
        super().__init__(workdir)
        self.out = workdir / "received"
        self.out.mkdir()
        mode = "--fork" if fork else "--single-process"
        self.command = [STORESCP, mode, "-aet", self.ae, "-dhl", "-od", str(self.out)]
        self.command.append(str(self.port))
        self.description = (
            f"dcmtk `storescp {mode}` writing each instance to a file (default options: no "
            "fsync, 16 KB maximum PDU)"
            + (", a child process per association" if fork else ", one association at a time")
        )

    def start(self) -> None:
        self._popen(self.command, NODELAY)
        wait_echo(self.port, self.ae, self.process, 20)  # type: ignore[arg-type]

    def count(self) -> int:
        return count_files(self.out)

    def after_round(self) -> None:
        for entry in os.scandir(self.out):
            if entry.is_dir():
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


class OrthancReceiver(Receiver):
    name = "orthanc"
    ae = "ORTHANC"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.http_port = free_port()
        db = workdir / "db"
        config = {
            "Name": "TertiaryPACS",
            "StorageDirectory": str(db),
            "IndexDirectory": str(db),
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": self.ae,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DefaultEncoding": "Utf8",
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        }
        self.config = workdir / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))
        self.version = "?"

    def rest(self, path: str) -> dict:  # type: ignore[type-arg]
        url = f"http://{HOST}:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=30) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def start(self) -> None:
        self._popen([ORTHANC, str(self.config)], NODELAY)
        assert self.process is not None
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise NotAvailable(f"Orthanc exited: {self.log_tail()}")
            try:
                self.version = str(self.rest("/system").get("Version", "?"))
                break
            except (urllib.error.URLError, OSError, ValueError):
                if time.monotonic() > deadline:
                    raise NotAvailable("Orthanc's REST API did not answer within 60 s") from None
                time.sleep(0.2)
        wait_echo(self.port, self.ae, self.process, 30)
        self.description = (
            f"Orthanc {self.version} with the PEERS.md configuration (SQLite index, files "
            "fsynced (SyncStorageArea), DICOMweb plugin, 4 DICOM threads, 16 KB maximum PDU)"
        )

    def count(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])


class GatewayReceiver(Receiver):
    name = "gateway"
    ae = "YILIAN"

    def __init__(self, workdir: Path, code: Path) -> None:
        super().__init__(workdir)
        self.gateway = Gateway(workdir, "", code)
        self.gateway.env["YILIAN_DICOM_PORT"] = str(self.port)
        self.gateway.env["YILIAN_DICOM_AE"] = self.ae
        self.gateway.env["TCP_NODELAY"] = "1"
        self.log_path = self.gateway.log_path
        self.db = workdir / "data" / "yilian.db"
        self.description = "`yilian serve` (SQLite)"

    @property
    def pid(self) -> int:
        assert self.gateway.process is not None
        return self.gateway.process.pid

    def start(self) -> None:
        settings = self.gateway.settings()
        self.gateway.start()
        self.process = self.gateway.process
        try:
            wait_echo(self.port, self.ae, self.process, 30)  # type: ignore[arg-type]
        except NotAvailable as exc:
            raise NotAvailable(
                f"not available: echoscu -aet {CALLING_AE} -aec {self.ae} to the gateway's "
                f"DICOM port failed after `yilian serve` started ({exc})"
            ) from None
        self.description = (
            f"`yilian serve` ({settings}) on a fresh data dir with `yilian demo` loaded: "
            "object store (fsynced), index, Patient matching and ImagingStudy on"
        )

    def query(self, sql: str) -> int:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as conn:
            return int(conn.execute(sql).fetchone()[0])

    def count(self) -> int:
        return self.query("SELECT count(*) FROM dicom_instance")

    def fhir_counts(self) -> dict[str, int]:
        out = {}
        for label, sql in (
            ("ImagingStudy", "SELECT count(*) FROM resource WHERE res_type = 'ImagingStudy'"),
            ("Patient", "SELECT count(*) FROM resource WHERE res_type = 'Patient'"),
            ("quarantined", "SELECT count(*) FROM dicom_quarantine"),
        ):
            try:
                out[label] = self.query(sql)
            except sqlite3.Error:
                out[label] = -1
        return out

    def stop(self) -> None:
        self.gateway.stop()


def make_receiver(name: str, workdir: Path, code: Path) -> Receiver:
    if name == "storescp":
        return StoreScp(workdir, fork=True)
    if name == "storescp-single":
        return StoreScp(workdir, fork=False)
    if name == "orthanc":
        return OrthancReceiver(workdir)
    return GatewayReceiver(workdir, code)


# -- the sender ------------------------------------------------------------------------------------


class Senders:
    """``associations`` storescu processes, each one association with its share of the files
    (split in order, so a study goes to one association or, at a boundary, two)."""

    def __init__(
        self, port: int, called: str, files: list[Path], associations: int, *, in_turn=False
    ) -> None:
        """``in_turn``: each storescu starts when the one before it has exited."""
        self.in_turn = in_turn
        n = len(files)
        self.groups = [
            files[k * n // associations : (k + 1) * n // associations] for k in range(associations)
        ]
        self.groups = [g for g in self.groups if g]
        self.port = port
        self.called = called
        self.processes: list[subprocess.Popen[bytes]] = []

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.poll() is None]

    def run(self, timeout: float, socket_timeout: int) -> tuple[float, list[str]]:
        """(seconds from the first start to the last exit, errors)."""
        errors: list[str] = []
        outputs = [tempfile.TemporaryFile() for _ in self.groups]
        start = time.perf_counter()
        # the waits block (waitpid) and a timer kills what is still running at the deadline:
        # Popen.wait with a timeout polls, sleeping 0.5, 1, 2 ... 50 ms between looks, which
        # rounded a 35 ms association up to 63.5 ms and a whole run up to 50 ms late
        killed: set[int] = set()

        def kill_the_rest() -> None:
            for k, process in enumerate(self.processes):
                if process.poll() is None:
                    killed.add(k)
                    process.kill()

        watchdog = threading.Timer(timeout, kill_the_rest)
        watchdog.start()
        try:
            for group, out in zip(self.groups, outputs, strict=True):
                if killed:
                    break
                command = [STORESCU, "-aet", CALLING_AE, "-aec", self.called]
                command += ["-to", "10", "-ts", str(socket_timeout), HOST, str(self.port)]
                self.processes.append(
                    subprocess.Popen(
                        command + [str(f) for f in group],
                        env=NODELAY,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
                if killed:  # the deadline passed while it started
                    self.processes[-1].kill()
                if self.in_turn:
                    self.processes[-1].wait()
            for process in self.processes:
                process.wait()
            seconds = time.perf_counter() - start
            errors += [f"storescu {k + 1} did not finish within {timeout:g} s" for k in killed]
        finally:
            watchdog.cancel()
            for process in self.processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
        for k, (process, out) in enumerate(zip(self.processes, outputs, strict=True)):
            out.seek(0)
            text = out.read().decode(errors="replace")
            out.close()
            bad = [line for line in text.splitlines() if line.startswith(("E:", "F:"))]
            if process.returncode != 0 or bad:
                errors.append(
                    f"storescu {k + 1} exit status {process.returncode}: "
                    + " / ".join((bad or text.splitlines() or ["no output"])[:3])[:300]
                )
        return seconds, errors


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Result:
    receiver: str
    kind: str
    associations: int
    instances: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    stored: int = 0
    errors: list[str] = field(default_factory=list)
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    background: float = -1.0  # CPU busy with other work just before
    others: float = -1.0  # share of the CPUs used by other work during
    kernel: float = 0.0  # share of the CPUs used by kernel threads during (not other work)
    receiver_cpu: float = 0.0  # seconds
    client_cpu: float = 0.0
    settle: float = 0.0  # seconds the receiver stayed busy after the last storescu exited
    peak_rss: int = 0
    rss_before: int = 0
    sender_peak: int = 0
    rates: list[float] = field(default_factory=list)
    studies: int = 0

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mbps(self) -> float:
        return self.nbytes / MB / self.seconds if self.seconds else 0.0

    @property
    def valid(self) -> bool:
        return not self.errors and self.stored == self.instances and bool(self.instances)


def measure(
    receiver: Receiver,
    maker: DataMaker,
    kind: str,
    count: int,
    associations: int,
    args: argparse.Namespace,
    scratch: Path,
) -> Result:
    result = Result(receiver.name, kind, associations)
    folder = scratch / f"{receiver.name}-{kind}-{associations}-{time.monotonic_ns()}"
    try:
        batch = (
            maker.make_huge(folder, args.huge_mib)
            if kind == "huge"
            else maker.make("small" if kind == SINGLE else kind, count, folder)
        )
        result.instances, result.nbytes, result.studies = (
            len(batch.files),
            batch.nbytes,
            batch.studies,
        )
        receiver.sent_instances += result.instances
        receiver.sent_studies += result.studies
        os.sync()  # the files just written are not flushed during the measurement
        result.background = wait_quiet(args.quiet_wait)
        before = receiver.count()
        in_turn = kind == SINGLE  # one storescu (one association) per instance, in turn
        senders = Senders(
            receiver.port,
            receiver.ae,
            batch.files,
            len(batch.files) if in_turn else associations,
            in_turn=in_turn,
        )
        meter = Meter(receiver.pid, senders.pids)
        timeout = 120 + batch.nbytes / (2 * MB)  # at least 2 MB/s
        meter.start()
        try:
            result.seconds, errors = senders.run(timeout, 600 if kind == "huge" else 60)
            result.settle = settle(receiver.pid)
        finally:
            result.receiver_cpu, result.client_cpu, result.others = meter.stop()
            result.kernel = meter.kernel
        result.errors += errors
        result.peak_rss, result.rss_before = meter.peak_rss, meter.rss_before
        result.sender_peak = meter.sender_peak
        result.stored = receiver.count() - before
        if result.stored != result.instances:
            result.errors.append(f"{result.instances} sent, {result.stored} held by the receiver")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            receiver.after_round()
        except OSError:
            pass
    print(
        f"  {receiver.name:<15} {kind:<5} {associations} assoc: {result.rate:8.1f} inst/s "
        f"{result.mbps:7.1f} MB/s  CPU {cpu_per_instance(result):6.2f} ms/inst (sender "
        f"{result.client_cpu / max(1, result.instances) * 1000:.2f})  "
        f"peak RSS {result.peak_rss / MIB:6.0f} MiB  held {result.stored}/{result.instances}"
        f"  settle {result.settle:.1f} s  errors {len(result.errors)}  (other work: "
        f"{result.background:.0%} before, {result.others:.0%} during; kernel threads "
        f"{result.kernel:.0%})",
        flush=True,
    )
    for error in result.errors[:3]:
        print(f"    error: {error}", flush=True)
    return result


def cpu_per_instance(r: Result) -> float:
    return r.receiver_cpu / r.instances * 1000 if r.instances else 0.0


def bench_config(
    receiver: Receiver,
    maker: DataMaker,
    kind: str,
    count: int,
    associations: int,
    args: argparse.Namespace,
    scratch: Path,
) -> Result:
    """Rounds (each measured again while other work disturbed it); the median round, with the
    others' errors and stored counts folded in."""
    rounds: list[Result] = []
    dropped: list[Result] = []
    for _ in range(args.rounds):
        attempts = [measure(receiver, maker, kind, count, associations, args, scratch)]
        while attempts[-1].others > args.max_other and len(attempts) < args.attempts:
            print(
                f"  other work took {attempts[-1].others:.0%} of the CPUs: measuring again",
                flush=True,
            )
            attempts.append(measure(receiver, maker, kind, count, associations, args, scratch))
        kept = min(attempts, key=lambda a: a.others)
        rounds.append(kept)
        dropped += [a for a in attempts if a is not kept]
    result = sorted(rounds, key=lambda r: r.rate)[len(rounds) // 2]
    result.rates = [r.rate for r in rounds]
    for other in [*rounds, *dropped]:
        if other is not result:
            result.errors.extend(other.errors)
    result.peak_rss = max(r.peak_rss for r in rounds)
    result.others = max(r.others for r in rounds)  # the table shows the most disturbed round
    label = f"{kind}, {associations} association(s)"
    if len(rounds) > 1:
        unit = "MB/s" if kind == "large" else "/s"
        figures = [r.mbps if kind == "large" else r.rate for r in rounds]
        result.notes.append(
            f"{label}: median of {len(rounds)} rounds ("
            + ", ".join(f"{f:,.1f} {unit}" if unit == "MB/s" else f"{f:,.0f}/s" for f in figures)
            + ")"
        )
    if dropped:
        result.notes.append(
            f"{label}: {len(dropped)} measurement(s) repeated because other work used more than "
            f"{args.max_other:.0%} of the CPUs"
        )
    slow = max(r.settle for r in rounds)
    if slow > 1.0:
        result.notes.append(
            f"{label}: busy up to {slow:.1f} s after the last storescu exited (counted in its "
            "CPU, not in the wall time)"
        )
    return result


def bench_receiver(
    name: str,
    args: argparse.Namespace,
    maker: DataMaker,
    code: Path,
    scratch: Path,
    info: dict[str, str],
) -> tuple[list[Result], Result | None, str]:
    """(results, the huge-instance result, the receiver's description)."""
    configs = [
        (kind, count, associations)
        for kind, count in (("small", args.small), ("large", args.large))
        if count
        for associations in args.associations
    ]
    if args.single:
        configs.append((SINGLE, args.single, 1))
    with tempfile.TemporaryDirectory(prefix=f"yilian-dicom-{name}-", dir=args.tmp) as tmp:
        receiver = make_receiver(name, Path(tmp), code)
        description = receiver.description
        try:
            receiver.start()
            description = receiver.description
            print(f"{name}: {description}", flush=True)
            if isinstance(receiver, OrthancReceiver):
                info["Orthanc"] = receiver.version
            fhir_before = receiver.fhir_counts() if isinstance(receiver, GatewayReceiver) else {}
            results = [
                bench_config(receiver, maker, kind, count, associations, args, scratch)
                for kind, count, associations in configs
            ]
            huge = None
            if not args.skip_huge:
                huge = measure(receiver, maker, "huge", 1, 1, args, scratch)
            if isinstance(receiver, GatewayReceiver):
                counts = receiver.fhir_counts()
                made = {k: v - fhir_before.get(k, 0) for k, v in counts.items()}
                last = results[-1] if results else huge
                assert last is not None
                last.notes.append(
                    f"during the run: {receiver.sent_instances} instances sent, "
                    f"{receiver.count()} indexed; {receiver.sent_studies} studies sent, "
                    f"{made['ImagingStudy']} ImagingStudy made; {made['Patient']} Patient "
                    f"made; {made['quarantined']} quarantined"
                )
                if made["ImagingStudy"] != receiver.sent_studies:
                    last.errors.append(
                        f"{receiver.sent_studies} studies sent but {made['ImagingStudy']} "
                        "ImagingStudy resources made"
                    )
                receiver.stop()
                levels, bad = receiver.gateway.log_summary()
                if results:
                    results[-1].notes.append(f"serve log lines by level: {dict(levels)}")
                    results[-1].notes.extend(f"serve log {line}" for line in bad)
            return results, huge, description
        except Exception as exc:  # report the receiver as skipped, keep going
            reason = (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, NotAvailable) else str(exc)
            )
            print(f"  {name}: SKIPPED: {reason}\n{receiver.log_tail()}", file=sys.stderr)
            return (
                [Result(name, kind, a, skipped=reason[:400]) for kind, _, a in configs],
                None if args.skip_huge else Result(name, "huge", 1, skipped=reason[:400]),
                description,
            )
        finally:
            receiver.stop()


# -- the report ------------------------------------------------------------------------------------


def dcmtk_version() -> str:
    done = subprocess.run([STORESCP, "--version"], capture_output=True, timeout=30)
    first = done.stdout.decode(errors="replace").splitlines()
    return first[0].strip("$ ").replace("dcmtk: ", "") if first else "?"


def file_system(path: Path) -> str:
    best = ("", "?", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind = line.split()[:3]
            if str(path.resolve()).startswith(mount) and len(mount) > len(best[0]):
                best = (mount, kind, device)
    except OSError:
        pass
    return f"{best[1]} ({best[2]} on {best[0]})"


def table(results: list[Result]) -> str:
    limit = {(r.kind, r.associations): r for r in results if r.receiver == "storescp" and r.rate}
    lines = [
        "| receiver | instances | associations | sent | instances/s | MB/s | / storescp "
        "| receiver CPU per instance | receiver peak RSS | other work (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.skipped:
            lines.append(
                f"| {r.receiver} | {r.kind} | {r.associations} | skipped: {r.skipped} | | | | | | |"
            )
            continue
        ratio = ""
        base = limit.get((r.kind, r.associations))
        if base and r.receiver != "storescp":
            ratio = f"{r.rate / base.rate:.2f}"
        flag = "" if r.valid else " **INVALID**"
        wall = r.seconds + r.settle
        each = "1 per instance" if r.kind == SINGLE else str(r.associations)
        lines.append(
            f"| {r.receiver}{flag} | {r.kind} | {each} | {r.instances} "
            f"| {r.rate:,.0f} | {r.mbps:,.1f} | {ratio} "
            f"| {cpu_per_instance(r):.2f} ms ({r.receiver_cpu / wall if wall else 0:.0%}) "
            f"| {r.peak_rss / MIB:,.0f} MiB | {r.background:.0%} / {r.others:.0%} |"
        )
    return "\n".join(lines)


def bars(results: list[Result]) -> list[str]:
    by = {(r.receiver, r.kind, r.associations): r for r in results if r.rate and not r.skipped}
    gateway = [r for r in results if r.receiver == "gateway"]
    if not gateway:
        return ["- gateway: not in this run (--receivers)."]
    if all(r.skipped for r in gateway):
        return [f"- gateway: {gateway[0].skipped}"]
    out = []
    for r in gateway:
        if r.skipped or not r.rate:
            continue
        limit = by.get(("storescp", r.kind, r.associations))
        peer = by.get(("orthanc", r.kind, r.associations))
        n = f"{r.associations} association{'s' if r.associations > 1 else ''}"
        ok: bool | None = True  # None: a figure the bar needs was not measured
        if r.kind == SINGLE:  # no bar: how a modality that opens an association per image fares
            parts = [f"gateway {r.rate:,.1f}/s"]
            if peer:
                parts.append(f"{r.rate / peer.rate:.2f} x Orthanc's {peer.rate:,.1f}/s")
            if limit:
                parts.append(f"storescp {limit.rate:,.1f}/s")
            out.append("- small, one association per instance (no bar): " + ", ".join(parts) + ".")
            continue
        if r.kind == "small":
            parts = [f"gateway {r.rate:,.0f}/s"]
            if limit:
                ratio = r.rate / limit.rate
                ok = ok and ratio >= 0.35
                parts.append(f"{ratio:.2f} x storescp's {limit.rate:,.0f}/s (bar 0.35)")
            else:
                ok = None
                parts.append("storescp not measured")
            if peer:
                ratio = r.rate / peer.rate
                ok = ok and ratio >= 1.0 if ok is not None else None
                parts.append(f"{ratio:.2f} x Orthanc's {peer.rate:,.0f}/s (bar 1.00)")
            else:
                ok = None
                parts.append("Orthanc not measured")
        else:
            parts = [f"gateway {r.mbps:,.1f} MB/s"]
            if limit:
                ratio = r.mbps / limit.mbps
                ok = ratio >= 0.5
                parts.append(f"{ratio:.2f} x storescp's {limit.mbps:,.1f} MB/s (bar 0.50)")
            else:
                ok = None
                parts.append("storescp not measured")
            if peer:
                parts.append(f"Orthanc {peer.mbps:,.1f} MB/s")
        if not r.valid:
            verdict = "**INVALID**"
        elif ok is None:
            verdict = "not judged"
        else:
            verdict = "meets the bar" if ok else "**below the bar**"
        out.append(f"- {r.kind}, {n}: " + ", ".join(parts) + f": {verdict}.")
    return out


def huge_table(huge: list[Result], args: argparse.Namespace) -> str:
    lines = [
        "| receiver | seconds | MB/s | receiver RSS before | receiver peak RSS | peak - before "
        "| storescu peak RSS | receiver CPU | held |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in huge:
        if r.skipped:
            lines.append(f"| {r.receiver} | skipped: {r.skipped} | | | | | | | |")
            continue
        held = "yes" if r.valid else "**no**: " + "; ".join(r.errors[:2])
        lines.append(
            f"| {r.receiver} | {r.seconds:.1f} | {r.mbps:,.0f} | {r.rss_before / MIB:,.0f} MiB "
            f"| {r.peak_rss / MIB:,.0f} MiB | {(r.peak_rss - r.rss_before) / MIB:,.0f} MiB "
            f"| {r.sender_peak / MIB:,.0f} MiB | {r.receiver_cpu:.1f} s | {held} |"
        )
    return "\n".join(lines)


def report(
    results: list[Result],
    huge: list[Result],
    descriptions: dict[str, str],
    args: argparse.Namespace,
    info: dict[str, str],
    command: str,
    sizes: dict[str, float],
) -> str:
    when = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %z")
    associations = " and ".join(str(a) for a in args.associations)
    out = [
        SECTION,
        "",
        f"Measured {when} with `{command}`.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in info.items() if k != "code") + ".",
        "",
        f"Code: {info.get('code', '?')}.",
        "",
        f"Workload: sent by dcmtk storescu (calling AE {CALLING_AE}, `TCP_NODELAY=1`, one "
        "association per storescu process, proposing the files' transfer syntax, Explicit VR "
        f"Little Endian) over {associations} parallel association(s), the files split in "
        f"order between them. **small**: {args.small} copies of pydicom's CT_small.dcm "
        f"({sizes.get('small', 0) / 1000:.1f} KB each), {SMALL_PER_STUDY} per study; "
        f"**large**: {args.large} CT images of {LARGE_SIDE} x {LARGE_SIDE} x 16 bit "
        f"({sizes.get('large', 0) / MB:.1f} MB each), {LARGE_PER_STUDY} per study; "
        f"**single**: {args.single} small instances, each in an association of its own (one "
        "storescu process per instance, each started when the one before it has exited), as a "
        "modality that opens an association per image sends them. Every "
        "instance has fresh SOP Instance, series and study UIDs (new files for every round, "
        "written and synced before it); studies go to 20 residents in turn (Chinese names in "
        "UTF-8, resident identity number as PatientID). Per configuration "
        f"{args.rounds} round(s), the median shown (other work: the most disturbed round). "
        "Rate = instances (or MB, 10^6 bytes of the files) / wall time from the start of the "
        "first storescu to the exit of the last, which includes storescu reading the files. "
        "Receiver CPU per instance: its process and children (from /proc), including what it "
        "does after the last response until idle; in brackets, as a share of one core over "
        "the wall time. Peak RSS: the receiver's process and children summed, sampled every "
        "50 ms. 'Other work': share of the machine's CPUs used by processes other than this "
        "script, storescu, the receiver and the kernel's threads (writeback), in the 2 s "
        "before the configuration (the script waits, at most --quiet-wait seconds, for it to "
        "fall below 15%) / during it. Sender, "
        "receiver and this script share the machine's cores.",
        "",
    ]
    out += [f"- **{name}**: {text}." for name, text in descriptions.items()]
    out += ["", table(results), ""]
    out += [
        "Bar (small instances/s at least Orthanc's and at least 0.35 x storescp's; large MB/s "
        "at least 0.5 x storescp's):",
        "",
        *bars(results),
        "",
    ]
    if huge:
        gib = args.huge_mib / 1024
        out += [
            f"Memory for one {gib:g} GiB instance (Multi-frame Grayscale Word Secondary "
            f"Capture, {HUGE_SIDE} x {HUGE_SIDE} x 16 bit frames, one association, one "
            "measurement; RSS of the receiver's process and children summed, sampled every "
            "50 ms):",
            "",
            huge_table(huge, args),
            "",
        ]
    invalid = [r for r in [*results, *huge] if not r.skipped and not r.valid]
    out.append(
        "Validity: every storescu exited 0 and every receiver holds every instance sent."
        if not invalid
        else "**INVALID run**: "
        + "; ".join(
            f"{r.receiver}/{r.kind}/{r.associations}: " + "; ".join(r.errors[:3]) for r in invalid
        )
    )
    notes = [f"- {r.receiver}: {n}" for r in [*results, *huge] for n in r.notes]
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
    parser.add_argument(
        "--receivers",
        default=",".join(RECEIVERS),
        help=f"comma-separated, from {', '.join(KNOWN_RECEIVERS)}",
    )
    parser.add_argument("--rounds", type=int, default=3, help="per configuration; median shown")
    parser.add_argument("--small", type=int, default=500, help="small instances per round")
    parser.add_argument("--large", type=int, default=40, help="large instances per round")
    parser.add_argument("--associations", default="1,4", help="parallel associations")
    parser.add_argument(
        "--single",
        type=int,
        default=100,
        help="small instances sent one association each, storescu after storescu (0: none)",
    )
    parser.add_argument("--skip-huge", action="store_true", help="leave out the 1 GiB instance")
    parser.add_argument("--huge-mib", type=int, default=1024, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--tmp", help="folder for the data sent and received (default: $TMPDIR)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="before each measurement, wait up to this many seconds for other work to leave "
        "the CPUs below 15%% busy (the figure is reported either way)",
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.10,
        help="measure again when other work used more than this share of the CPUs",
    )
    parser.add_argument("--attempts", type=int, default=3, help="at most, per round")
    args = parser.parse_args()
    args.associations = [int(a) for a in args.associations.split(",") if a.strip()]
    receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
    unknown = set(receivers) - set(KNOWN_RECEIVERS)
    if unknown:
        parser.error(f"unknown receiver(s): {', '.join(sorted(unknown))}")
    if args.rounds < 1 or any(a < 1 for a in args.associations):
        parser.error("--rounds and --associations must be at least 1")
    command = shlex.join(["python", "bench/dicom_ingest.py", *sys.argv[1:]])

    import pydicom

    info = machine()
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory"] = f"{kb / (1 << 20):.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    info["dcmtk"] = dcmtk_version()
    info["pydicom"] = pydicom.__version__
    try:
        import pynetdicom

        info["pynetdicom"] = pynetdicom.__version__
    except ImportError:
        pass
    tmp_root = Path(args.tmp or tempfile.gettempdir())
    info["temp files on"] = file_system(tmp_root)
    print(
        f"DICOM ingest benchmark: receivers {', '.join(receivers)}; {args.small} small and "
        f"{args.large} large instances per round, {args.rounds} round(s), associations "
        f"{args.associations}{'' if args.skip_huge else f', one {args.huge_mib} MiB instance'}",
        flush=True,
    )
    maker = DataMaker()
    sizes: dict[str, float] = {}
    results: list[Result] = []
    huge: list[Result] = []
    descriptions: dict[str, str] = {}
    with (
        tempfile.TemporaryDirectory(prefix="yilian-bench-code-") as copy,
        tempfile.TemporaryDirectory(prefix="yilian-dicom-send-", dir=args.tmp) as send,
    ):
        scratch = Path(send)
        for kind in ("small", "large"):
            probe = maker.make(kind, 1, scratch / f"probe-{kind}")
            sizes[kind] = probe.nbytes
            shutil.rmtree(scratch / f"probe-{kind}")
        info["code"], _ = code_state()
        code = ROOT
        if "gateway" in receivers:
            code = snapshot(Path(copy))
            if code != ROOT:
                info["code"] += ", run from a copy taken at the start"
        for name in receivers:
            got, one, description = bench_receiver(name, args, maker, code, scratch, info)
            results += got
            descriptions[name] = description
            if one is not None:
                huge.append(one)
    text = report(results, huge, descriptions, args, info, command, sizes)
    print()
    print(text)
    if not args.no_write:
        write_section(args.out, text)
        print(f"written to {args.out}")
    ok = all(r.valid for r in [*results, *huge] if not r.skipped)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
