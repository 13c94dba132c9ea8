"""Header reading in worker processes (``dicom.readers``): the same header as the gateway's own
reading, None for what the gateway's process must read itself, and a worker that dies costs
nothing but its replacement."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom import header
from dicom.ingest import IN_MEMORY, Origin, _read
from dicom.readers import Readers
from dicom.scp import DicomServer
from gateway.context import Context
from tests.dicom.test_known import instance
from tests.dicom.test_scp import instances, sample, storescu
from tests.dicom.test_scp import scp as scp_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow  # starts processes
ORIGIN = Origin("dicom", "XINGFU_CT", "127.0.0.1:1", "XINGFU-THC")


def plain(folder: Path, number: int, **values: str) -> Path:
    """A CT whose header ``header.quick`` reads (CT_small.dcm carries Other Patient IDs, which
    it leaves to pydicom)."""
    path = instance(folder, number, **values)
    ds = pydicom.dcmread(path)
    del ds.OtherPatientIDsSequence
    ds.save_as(path, enforce_file_format=True)
    assert header.quick(path.read_bytes()) is not None
    return path


@pytest.fixture(scope="module")
def readers() -> Iterator[Readers]:
    pool = Readers(1, IN_MEMORY)
    yield pool
    pool.close()


def test_a_worker_reads_the_header_size_and_digest_the_gateway_would(
    readers: Readers, tmp_path: Path
) -> None:
    path = plain(tmp_path, 7, PatientName="王^小东", SpecificCharacterSet="ISO_IR 192")
    done = readers.read(path)
    assert done is not None
    head, ecg_ds, measured = _read(path)
    assert ecg_ds is None
    assert done == (head, measured)
    assert done[0]["PatientName"] == "王^小东"
    assert readers.read(path, hashed=False) == (head, None)  # the lane hashed it already


def test_what_a_worker_cannot_read_is_left_to_the_gateways_process(
    readers: Readers, tmp_path: Path
) -> None:
    path = tmp_path / "object.dcm"
    path.write_bytes(b"\0" * 200)
    assert readers.read(path) is None
    assert readers.read(tmp_path / "gone.dcm") is None  # a file it cannot open


def test_an_ecg_filed_with_readers_still_becomes_its_waveform_observation(
    demo: Context, tmp_path: Path
) -> None:
    pool = Readers(1, IN_MEMORY)
    demo.dicom.readers = pool
    try:
        path = tmp_path / "ecg.dcm"
        shutil.copy(sample("waveform_ecg.dcm"), path)
        outcome = demo.dicom.file(path, ORIGIN)
    finally:
        demo.dicom.readers = None
        pool.close()
    assert outcome.result == "stored"
    assert any(r.startswith("Observation/") for r in outcome.resources)
    assert any(r.startswith("DiagnosticReport/") for r in outcome.resources)


def test_an_object_larger_than_read_whole_is_left_to_the_gateways_process(
    tmp_path: Path,
) -> None:
    path = plain(tmp_path, 1)
    small = Readers(1, path.stat().st_size - 1)
    try:
        assert small.read(path) is None
    finally:
        small.close()


def test_a_worker_that_dies_is_replaced_and_filing_goes_on(demo: Context, tmp_path: Path) -> None:
    pool = Readers(1, IN_MEMORY)
    demo.dicom.readers = pool
    try:
        first = demo.dicom.file(plain(tmp_path, 1), ORIGIN)
        assert first.result == "stored"
        [pid] = pool.pids
        os.kill(pid, signal.SIGKILL)
        second = demo.dicom.file(plain(tmp_path, 2), ORIGIN)  # read here meanwhile
        assert second.result == "stored"
        [replacement] = pool.pids
        assert replacement != pid
        assert pool.read(plain(tmp_path, 3)) is not None
    finally:
        demo.dicom.readers = None
        pool.close()


def test_yilian_serve_reads_headers_in_the_processes_its_settings_ask_for(demo: Context) -> None:
    for count in (1, 0):
        settings = demo.settings.model_copy(update={"dicom_readers": count, "hl7_workers": 0})
        ctx = Context.build(settings, migrate=False, serving=True)
        try:
            if count:
                assert ctx.dicom.readers is not None and len(ctx.dicom.readers.pids) == 1
            else:
                assert ctx.dicom.readers is None
        finally:
            ctx.close()


def test_instances_stored_with_storescu_are_read_by_the_workers(
    scp_server: DicomServer,  # noqa: F811 - the fixture imported above
    demo: Context,
    tmp_path: Path,
) -> None:
    pool, asked = Readers(1, IN_MEMORY), []
    read = pool.read

    def counted(path: Path, **how: bool):  # type: ignore[no-untyped-def]
        asked.append(how)
        return read(path, **how)

    pool.read = counted  # type: ignore[method-assign]
    demo.dicom.readers = pool
    try:
        files = [plain(tmp_path, n) for n in range(1, 4)]
        out = storescu(scp_server.port, *files)
        assert "Received Store Response (Success)" in out, out
    finally:
        demo.dicom.readers = None
        pool.close()
    assert asked == [{"hashed": False}] * 3  # the storage lane hashed them as they arrived
    assert sorted(r.instance_number for r in instances(demo)) == [1, 2, 3]
