"""The storage lane (dicom.lane) against real senders: which associations it serves, what it
files, and what it does with what a storage association may not carry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import select

from dicom import commands, quarantine
from dicom.scp import DicomServer, ScpSettings
from dicom.send import Destination, send
from gateway.context import Context
from records import schema
from tests.dicom.conftest import query_retrieve_scp
from tests.dicom.peers import dcmtk
from tests.dicom.test_scp import copy_with_new_uids, dataset_bytes, sample, storescu

pytestmark = pytest.mark.slow


@pytest.fixture
def served(demo: Context, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DicomServer, list]]:
    """The SCP with query/retrieve, noting each C-STORE pynetdicom's own event brought."""
    through_pynetdicom: list[str] = []
    original = DicomServer._on_store

    def on_store(self: DicomServer, event: Any) -> Any:
        through_pynetdicom.append(str(event.request.AffectedSOPInstanceUID))
        return original(self, event)

    monkeypatch.setattr(DicomServer, "_on_store", on_store)
    with query_retrieve_scp(demo) as server:
        yield server, through_pynetdicom


def _filed(ctx: Context) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        return {r.sop_uid: r for r in conn.execute(select(schema.dicom_instance))}


def test_a_modalitys_association_is_served_by_the_lane(
    served: tuple[DicomServer, list], demo: Context, tmp_path: Path
) -> None:
    server, through_pynetdicom = served
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 3)
    out = storescu(server.port, *files)
    assert out.count("Received Store Response (Success)") == 3, out
    assert through_pynetdicom == []  # not one went through pynetdicom's C-STORE event
    filed = _filed(demo)
    for path in files:
        row = filed[pydicom.dcmread(path).SOPInstanceUID]
        stored = Path(demo.dicom.store.path(row.storage_key))
        # storescu re-encodes what it sends: equal, not byte for byte
        original = pydicom.dcmread(path)
        del original[0xFFFCFFFC]  # trailing padding storescu does not send
        assert pydicom.dcmread(stored) == original
        # the digest and size taken as the lane wrote the file are the file's
        assert blake3.blake3(stored.read_bytes()).hexdigest() == row.digest
        assert row.size == stored.stat().st_size
    done = dcmtk("echoscu", "-aet", "XINGFU_CT", "-aec", "YILIAN", "127.0.0.1", str(server.port))
    assert done.returncode == 0, done.stderr  # a C-ECHO on its own association, in the lane


def test_an_association_with_query_retrieve_too_stays_with_pynetdicom(
    served: tuple[DicomServer, list], demo: Context, tmp_path: Path
) -> None:
    server, through_pynetdicom = served
    [path] = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 1)
    ae = AE(ae_title="XINGFU_CT")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="YILIAN")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()
    uid = pydicom.dcmread(path).SOPInstanceUID
    assert through_pynetdicom == [uid] and uid in _filed(demo)


def test_a_large_instance_in_megabyte_pdus_is_streamed_through_the_lane(
    served: tuple[DicomServer, list], demo: Context, tmp_path: Path
) -> None:
    server, through_pynetdicom = served
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.Rows, ds.Columns = 2048, 1536  # 6 MB of 16-bit pixels: several PDUs of 1 MB
    ds.PixelData = bytes(range(256)) * (2048 * 1536 * 2 // 256)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    destination = Destination("127.0.0.1", server.port, "YILIAN", calling_ae="XINGFU_CT")
    report = send([tmp_path / "big.dcm"], destination)
    assert report.failed == [] and report.sent == [ds.SOPInstanceUID]
    assert through_pynetdicom == []
    row = _filed(demo)[ds.SOPInstanceUID]
    stored = Path(demo.dicom.store.path(row.storage_key))
    assert dataset_bytes(stored) == dataset_bytes(tmp_path / "big.dcm")
    assert blake3.blake3(stored.read_bytes()).hexdigest() == row.digest
    assert row.size == stored.stat().st_size


def _raw_association(port: int) -> Any:
    ae = AE(ae_title="XINGFU_CT")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="YILIAN")
    assert assoc.is_established
    return assoc


def _c_find_rq() -> bytes:
    return commands.command_set(
        [
            (commands.AFFECTED_SOP_CLASS, commands.uid(str(CTImageStorage))),
            (commands.COMMAND_FIELD, commands.us(0x0020)),  # C-FIND-RQ
            (commands.MESSAGE_ID, commands.us(1)),
            (commands.PRIORITY, commands.us(0)),
            (commands.DATASET_TYPE, commands.us(0x0001)),
        ]
    )


@pytest.mark.parametrize(
    "what",
    [
        "dataset without request",
        "another service's command",
        "broken command set",
        "unknown context",
    ],
)
def test_what_a_storage_association_may_not_carry_aborts_it_and_others_are_served(
    served: tuple[DicomServer, list], demo: Context, tmp_path: Path, what: str
) -> None:
    server, _ = served
    assoc = _raw_association(server.port)
    context = assoc.accepted_contexts[0].context_id
    command, last = commands.COMMAND, commands.LAST
    pdu = {
        "dataset without request": commands.p_data_tf(context, last, b"\x08\x00\x18\x00"),
        "another service's command": commands.p_data_tf(context, command | last, _c_find_rq()),
        "broken command set": commands.p_data_tf(context, command | last, b"\x00\x00\x00\x00\x04"),
        "unknown context": commands.p_data_tf(context + 2, command | last, _c_find_rq()),
    }[what]
    assoc.dul.socket.send(pdu)
    deadline = time.monotonic() + 10
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert assoc.is_aborted  # the gateway sent A-ABORT
    assert quarantine.entries(demo.engine) == []  # no object was begun, none is kept
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 1)
    assert "Received Store Response (Success)" in storescu(server.port, *files)


def test_a_c_store_answer_carries_the_refusal_and_its_comment(
    served: tuple[DicomServer, list], tmp_path: Path
) -> None:
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    del ds.StudyInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "no-study.dcm", enforce_file_format=True)
    server, through_pynetdicom = served
    assoc = _raw_association(server.port)
    try:
        status = assoc.send_c_store(tmp_path / "no-study.dcm")
    finally:
        assoc.release()
    assert through_pynetdicom == []
    assert status.Status == 0xA900  # data set does not match SOP class: a UID is missing
    assert "StudyInstanceUID" in status.ErrorComment


def test_filing_slower_than_the_network_timeout_does_not_end_the_association(
    demo: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection's thread files the instance while the association's thread watches the
    network timeout: the time spent filing is not silence from the sender."""
    original = demo.dicom.file

    def slow_file(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)  # the writer busy with others' work
        return original(*args, **kwargs)

    monkeypatch.setattr(demo.dicom, "file", slow_file)
    server = DicomServer(
        demo.dicom, ScpSettings(port=0, network_timeout=1), known_ae_titles=lambda: ["XINGFU_CT"]
    )
    server.start()
    try:
        files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 2)
        out = storescu(server.port, *files)
    finally:
        server.stop()
    assert out.count("Received Store Response (Success)") == 2, out
    assert len(_filed(demo)) == 2


@pytest.mark.parametrize("pixels", [0, 3 * 1024 * 1024], ids=["small", "several-megabytes"])
def test_an_instance_whose_file_cannot_be_written_is_answered_out_of_resources(
    served: tuple[DicomServer, list], demo: Context, tmp_path: Path, pixels: int
) -> None:
    """A full disk: the instance is read to its end and answered 0xA700 with the system's
    reason, its file removed, and the association goes on with the next one."""
    first, failing, after = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 3)
    if pixels:  # the failure comes at the first megabyte, and the rest must still be read
        ds = pydicom.dcmread(failing)
        ds.Rows, ds.Columns = 1024, 1536
        ds.PixelData = bytes(range(256)) * (pixels // 256)
        ds.save_as(failing, enforce_file_format=True)
    full = tmp_path / "scratch-on-a-full-disk"
    full.symlink_to("/dev/full")  # every write to it fails: No space left on device
    server, through_pynetdicom = served
    take, taken = server._spares.take, []

    def one_file_on_a_full_disk() -> Path:
        taken.append(1)
        return full if len(taken) == 2 else take()

    server._spares.take = one_file_on_a_full_disk  # type: ignore[method-assign]
    assoc = _raw_association(server.port)
    try:
        statuses = [assoc.send_c_store(path) for path in (first, failing, after)]
    finally:
        assoc.release()
    assert through_pynetdicom == [] and len(taken) == 3
    assert [s.Status for s in statuses] == [0x0000, 0xA700, 0x0000]
    assert statuses[1].ErrorComment == "cannot be written now: No space left on device"
    assert not full.is_symlink() and Path("/dev/full").exists()  # the link went, not the device
    filed = _filed(demo)
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in (first, failing, after)]
    assert uids[0] in filed and uids[1] not in filed and uids[2] in filed
