"""Forwarding a CT study for remote diagnosis, against sending it directly (the limit).

    python bench/teleconsult_forward.py [--instances 200] [--rounds 3] [--no-write]
                                        [--associations N] [--direct-split N] [--sender 1,3]

A hospital that runs only a PACS: Orthanc with DICOM TLS and a required client certificate
(PEERS.md). In each round, alternating:

- **direct** (the limit): dcmtk's storescu sends the study's files to Orthanc over TLS with the
  township's client certificate, one association; the time from its start to its exit;
- **gateway**: the study is already filed at a township gateway (a real gateway context with
  the demo loaded, SQLite, its delivery worker running as in ``yilian serve``); the time from
  submitting the imaging request (``Teleconsult.submit``: routing, ServiceRequest, Task, outbox
  rows in one transaction) to Orthanc holding every instance, polled every 50 ms through its
  REST API (``/statistics``: a count, cheap for Orthanc to answer while it stores). The
  worker's sender opens as many associations as ``dicom.send.default_associations`` says;
  ``--associations N`` caps them (``dicom.send.MAX_ASSOCIATIONS``) to compare;
- **direct split** (with ``--direct-split N``, for information, not the bar): N storescu
  processes at once, the files split in order between them;
- **sender** (with ``--sender 1,3``, for information): ``dicom.send.send`` alone, from the
  files to Orthanc over TLS with N associations, from its call to its return.

Orthanc's copy of the study is deleted between runs, and ``sync`` runs before each timed path
(the study just written, and Orthanc's deletions, would otherwise be written back while the
next path is timed). The study: 512 x 512 x 16-bit CT images (pydicom's CT_small.dcm with a
larger pixel array), fresh UIDs for each round. The bar (issue 5): gateway at most 1.5 x
direct. Figures go to the section "Remote diagnosis: forwarding a study"
of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from dicom import send  # noqa: E402
from dicom.ingest import Origin  # noqa: E402
from gateway import demo  # noqa: E402
from gateway.context import Context  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from records import store, users  # noqa: E402
from teleconsult import directory  # noqa: E402
from teleconsult.delivery import Workers  # noqa: E402
from teleconsult.service import RequestForm  # noqa: E402
from tests.dicom.orthanc import DicomTls, running_orthanc  # noqa: E402
from tests.tls import make_ca  # noqa: E402

PATIENT = "demo-wang-xiuying"
SECTION = "## Remote diagnosis: forwarding a study (bench/teleconsult_forward.py)"


def make_study(folder: Path, count: int, patient_id: str) -> list[Path]:
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    pixels = np.random.default_rng(7).integers(0, 2000, (512, 512), dtype=np.uint16)
    base.Rows, base.Columns = 512, 512
    base.PixelData = pixels.tobytes()
    base.PatientID = patient_id
    base.StudyInstanceUID, base.SeriesInstanceUID = generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    paths = []
    for n in range(count):
        base.SOPInstanceUID = generate_uid()
        base.file_meta.MediaStorageSOPInstanceUID = base.SOPInstanceUID
        base.InstanceNumber = n + 1
        path = folder / f"{n:04d}.dcm"
        base.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def wait_for(pacs, study_uid: str, count: int, timeout: float = 600) -> None:  # type: ignore[no-untyped-def]
    """Until Orthanc holds ``count`` instances, which are the study's: it holds nothing else
    (``forget`` after each round). Listing the study's instances every 50 ms instead cost
    Orthanc enough CPU to slow the storing it measures."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pacs.get("/statistics")["CountInstances"] >= count:
            found = pacs.post("/tools/lookup", study_uid)
            held = pacs.get(f"/studies/{found[0]['ID']}/instances") if found else []
            if len(held) != count:
                raise SystemExit(f"Orthanc holds other instances than the study's {count}")
            return
        time.sleep(0.05)
    raise SystemExit(f"Orthanc did not get {count} instances within {timeout} s")


def forget(pacs, study_uid: str) -> None:  # type: ignore[no-untyped-def]
    for found in pacs.post("/tools/lookup", study_uid):
        pacs.delete(f"/studies/{found['ID']}")


def direct(paths: list[Path], pacs, ca, processes: int = 1) -> float:  # type: ignore[no-untyped-def]
    """storescu to Orthanc; with ``processes`` > 1 that many at once, the files split in order."""
    cert, key = ca.client_files("XINGFU_THC")
    command = [
        "/usr/bin/storescu", "-aet", "XINGFU", "-aec", pacs.aet,
        "+tls", str(key), str(cert), "+cf", str(ca.ca_cert),
        "127.0.0.1", str(pacs.dicom_port),
    ]  # fmt: skip
    share = -(-len(paths) // processes)
    parts = [paths[n : n + share] for n in range(0, len(paths), share)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    running = [subprocess.Popen([*command, *map(str, part)], env=env) for part in parts]
    codes = [process.wait() for process in running]
    seconds = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"storescu failed: exit status {codes}")
    return seconds


def sender(paths: list[Path], pacs, ca, associations: int) -> float:  # type: ignore[no-untyped-def]
    destination = send.Destination(
        "127.0.0.1", pacs.dicom_port, pacs.aet, "XINGFU", ca.client_context("XINGFU_THC")
    )
    start = time.perf_counter()
    report = send.send(paths, destination, associations=associations)
    seconds = time.perf_counter() - start
    if report.failed or len(report.sent) != len(paths):
        raise SystemExit(f"the sender stored {len(report.sent)} of {len(paths)}")
    return seconds


def gateway(ctx: Context, paths: list[Path], study_uid: str, pacs, doctor) -> float:  # type: ignore[no-untyped-def]
    origin = Origin("dicom", "XINGFU_CT", "127.0.0.1:1", ctx.dicom.organization_of_ae("XINGFU_CT"))
    for path in paths:
        outcome = ctx.dicom.file(path, origin)
        assert outcome.ok, outcome.reason
    with ctx.engine.connect() as conn:
        found = ctx.records.find_by_identifier(
            conn, "ImagingStudy", "urn:dicom:uid", f"urn:oid:{study_uid}"
        )
    form = RequestForm(kind="imaging", patient=PATIENT, studies=[found[0].res_id])
    os.sync()  # as before the other paths: no writeback of what was just written while timed
    start = time.perf_counter()
    ctx.teleconsult.submit(doctor, form)
    wait_for(pacs, study_uid, len(paths))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--associations", type=int, help="at most this many at once (default: the sender's)"
    )
    parser.add_argument(
        "--direct-split", type=int, default=1, help="also N storescu at once (information)"
    )
    parser.add_argument(
        "--sender", default="", help="also dicom.send alone, with these numbers of associations"
    )
    args = parser.parse_args()
    senders = [int(n) for n in args.sender.split(",") if n]
    if args.associations:
        send.MAX_ASSOCIATIONS = args.associations
    associations = send.default_associations(args.instances)
    with tempfile.TemporaryDirectory(prefix="yilian-forward-") as tmp:
        work = Path(tmp)
        (work / "ca").mkdir()
        ca = make_ca(work / "ca", ["XINGFU_THC"])
        tls = DicomTls(ca.server_cert, ca.server_key, ca.ca_cert, client_certificate_required=True)
        cert, key = ca.client_files("XINGFU_THC")
        settings = Settings(
            data_dir=work / "township", mllp_enabled=False, dicom_enabled=False, hl7_workers=0,
            consortium_tls_cert=cert, consortium_tls_key=key, consortium_tls_ca=ca.ca_cert,
            outbox_poll_seconds=0.05, dicom_ae="XINGFU",
        )  # fmt: skip
        ctx = Context.build(settings)
        demo.load(ctx)
        with ctx.engine.begin() as conn:
            number = store.read(conn, "Patient", PATIENT).json()["identifier"][0]["value"]
            doctor = users.get(conn, "doctor.xingfu").principal()  # type: ignore[union-attr]
        with running_orthanc(work, aet="CITY_PACS", dicom_tls=tls) as pacs:
            with ctx.engine.begin() as conn:
                store.remove(conn, "Endpoint", "CITY-FIRST-fhir")  # a PACS-only hospital
                body = directory.endpoint_body(
                    "CITY-FIRST", "dicom", f"dicoms://CITY_PACS@localhost:{pacs.dicom_port}",
                    active=True,
                )  # fmt: skip
                store.write(conn, "Endpoint", "CITY-FIRST-dicom", body, "PUT")
            workers = Workers(ctx.courier, 1)
            workers.start()
            split = f"direct split {args.direct_split}"
            names = ["direct", "gateway"] + ([split] if args.direct_split > 1 else [])
            names += [f"sender, {n} association{'s' * (n > 1)}" for n in senders]
            times: dict[str, list[float]] = {name: [] for name in names}
            size = 0.0
            try:
                for n in range(args.rounds):
                    for name in names:
                        paths = make_study(work / f"{name}-{n}", args.instances, number)
                        size = sum(p.stat().st_size for p in paths) / 1e6
                        os.sync()  # the files and Orthanc's last deletions on disk first
                        study = str(
                            pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
                        )
                        if name == "direct":
                            seconds = direct(paths, pacs, ca)
                        elif name == "gateway":
                            seconds = gateway(ctx, paths, study, pacs, doctor)
                        elif name == split:
                            seconds = direct(paths, pacs, ca, args.direct_split)
                        else:
                            seconds = sender(paths, pacs, ca, int(name.split()[1]))
                        times[name].append(seconds)
                        print(f"round {n + 1} {name}: {seconds:.2f} s", flush=True)
                        forget(pacs, study)
            finally:
                workers.stop()
                ctx.close()
    report = render(times, args, size, associations)
    print(report)
    if not args.no_write:
        write(args.out, report)
    return 0


def render(
    times: dict[str, list[float]], args: argparse.Namespace, size: float, associations: int
) -> str:
    d, g = statistics.median(times["direct"]), statistics.median(times["gateway"])
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M +0000")
    rows = "\n".join(
        f"| {name} | {statistics.median(v):.2f} | {', '.join(f'{x:.2f}' for x in v)} |"
        for name, v in times.items()
    )
    ratios = [x / y for x, y in zip(times["gateway"], times["direct"], strict=True)]
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    verdict = "meets" if g <= 1.5 * d else "does not meet"
    options = f" --associations {args.associations}" if args.associations else ""
    options += f" --direct-split {args.direct_split}" if args.direct_split > 1 else ""
    options += f" --sender {args.sender}" if args.sender else ""
    split = (
        f"\ndirect split {args.direct_split} = {args.direct_split} storescu at once, the files "
        "split between them (for information, not the bar)."
        if args.direct_split > 1
        else ""
    )
    if args.sender:
        split += "\nsender = `dicom.send.send` alone, from the files to Orthanc (for information)."
    return f"""{SECTION}

Measured {now} with `python bench/teleconsult_forward.py --instances {args.instances}
--rounds {args.rounds}{options}` on {os.cpu_count()} CPUs.
Study: {args.instances} CT images of 512 x 512 x 16 bit ({size:.1f} MB).
Destination: Orthanc with DICOM TLS and a required client certificate. direct = dcmtk storescu
over TLS (one association, TCP_NODELAY=1); gateway = from `Teleconsult.submit` to Orthanc
holding every instance (routing, outbox, the delivery worker's C-STORE over TLS over
{associations} association(s) at once, Orthanc's instance count polled every 50 ms).{split}
Rounds alternate; the median is shown.

| path | median s | rounds s |
|---|---:|---:|
{rows}

gateway / direct = {g / d:.2f}, {spread} round by round (bar: at most 1.5;
{verdict} it).
"""


def write(out: Path, report: str) -> None:
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    if SECTION in text:
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + report + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + report
    out.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
