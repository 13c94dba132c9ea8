"""The file object store: keys stay inside its folder; objects land whole and durable."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicom import quarantine
from dicom.ingest import Origin
from dicom.storage import FileStore
from gateway.context import Context
from records import schema


def test_an_object_put_is_read_back_and_the_source_is_gone(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    source = store.scratch() / "incoming.dcm"
    source.write_bytes(b"DICM" * 1000)
    store.put_file("studies/1.2/3.4/5.6.dcm", source)
    assert not source.exists()
    assert store.exists("studies/1.2/3.4/5.6.dcm")
    with store.open("studies/1.2/3.4/5.6.dcm") as f:
        assert f.read() == b"DICM" * 1000


@pytest.mark.parametrize("eager", [False, True])
def test_an_object_and_every_folder_made_for_it_are_fsynced_under_their_final_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, eager: bool
) -> None:
    store = FileStore(tmp_path / "objects")
    fsync, synced = os.fsync, []

    def noting(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", noting)
    source = store.scratch() / "incoming.dcm"
    source.write_bytes(b"DICM" * 1000)
    store.put_file("studies/1.2/3.4/5.6.dcm", source, eager=eager)
    root = store.root
    # each new folder is fsynced in its parent, then the object under its final name, then
    # its folder (with ``eager``, both at once, in either order)
    assert synced[:3] == [str(root), str(root / "studies"), str(root / "studies/1.2")]
    last = [str(root / "studies/1.2/3.4/5.6.dcm"), str(root / "studies/1.2/3.4")]
    assert (sorted(synced[3:]) == sorted(last)) if eager else (synced[3:] == last)
    synced.clear()
    (source := store.scratch() / "next.dcm").write_bytes(b"DICM")
    store.put_file("studies/1.2/3.4/7.8.dcm", source)  # its folders are there already
    assert synced == [str(root / "studies/1.2/3.4/7.8.dcm"), str(root / "studies/1.2/3.4")]


@pytest.mark.parametrize("key", ["../outside.dcm", "studies/../../x", "/etc/passwd", ""])
def test_a_key_outside_the_store_is_refused(tmp_path: Path, key: str) -> None:
    store = FileStore(tmp_path / "objects")
    with pytest.raises(ValueError, match="outside the store"):
        store.path(key)


def test_an_object_the_disk_cannot_keep_is_not_indexed_and_is_quarantined(
    demo: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object is made durable before its unit commits: when the disk fails, nothing of
    the unit commits and the sender is told to retry (0xA700)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)

    put_file, failures = demo.dicom.store.put_file, []

    def fails_once(
        key: str, source: Path, **how: bool
    ) -> None:  # then the quarantine keeps the object
        if not failures:
            failures.append(key)
            raise OSError(5, "Input/output error")
        put_file(key, source, **how)

    monkeypatch.setattr(demo.dicom.store, "put_file", fails_once)
    outcome = demo.dicom.file(path, Origin("dicom", "XINGFU_CT", "127.0.0.1:1", "XINGFU-THC"))
    assert outcome.status == 0xA700 and "OSError" in (outcome.reason or "")
    with demo.engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(schema.dicom_instance)).scalar()
        studies = conn.execute(
            select(func.count())
            .select_from(schema.resource)
            .where(schema.resource.c.res_type == "ImagingStudy")
        ).scalar()
    assert rows == 0 and studies == 0  # nothing of the unit committed
    [entry] = quarantine.entries(demo.engine)
    assert entry.sop_uid == ds.SOPInstanceUID


def test_the_index_row_commits_only_after_the_object_is_durable(
    demo: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object is made durable on another thread while the unit's statements run; the
    commit still waits for it, however slow the disk."""
    from sqlalchemy import event

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    put_file, happened = demo.dicom.store.put_file, []

    def slow_disk(key: str, source: Path, **how: bool) -> None:
        import time

        time.sleep(0.3)
        put_file(key, source, **how)
        happened.append("durable")

    def committed(conn) -> None:  # type: ignore[no-untyped-def]
        happened.append("commit")

    monkeypatch.setattr(demo.dicom.store, "put_file", slow_disk)
    event.listen(demo.engine, "commit", committed)
    try:
        outcome = demo.dicom.file(path, Origin("dicom", "XINGFU_CT", "127.0.0.1:1", "XINGFU-THC"))
    finally:
        event.remove(demo.engine, "commit", committed)
    assert outcome.status == 0x0000, outcome.reason
    assert happened[:2] == ["durable", "commit"]


def test_spare_files_are_made_ahead_and_each_is_taken_once(tmp_path: Path) -> None:
    from dicom.storage import SpareFiles
    from records import ids

    spares = SpareFiles(tmp_path, "receiving-", ids.new_id, keep=4)
    first = spares.take()  # none ready yet: made at once
    assert first.exists() and first.stat().st_size == 0 and first.name.startswith("receiving-")
    deadline = time.monotonic() + 10
    while len(list(tmp_path.iterdir())) < 5:  # the thread fills the reserve behind it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    taken = {spares.take() for _ in range(20)}
    assert len(taken) == 20 and first not in taken
    spares.stop()
    assert set(tmp_path.iterdir()) == taken | {first}  # ready ones removed; taken ones kept


def test_one_instance_sent_twice_at_once_with_other_content_keeps_the_stored_object(
    demo: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two filings of one SOP Instance UID at the same moment, with different bytes: one is
    stored, the other refused as a conflict, and the stored object's file is the one its index
    row describes (both placing their file at once used to leave none)."""
    import threading

    import blake3

    sop_uid = generate_uid()
    paths = []
    for n, description in enumerate(("first", "second")):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.StudyDescription = description
        paths.append(tmp_path / f"{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    put_file, both_placing = demo.dicom.store.put_file, threading.Barrier(2, timeout=1)

    def placing_together(key: str, source: Path, **how: bool) -> None:
        try:
            both_placing.wait()  # without one filing at a time, both get here
        except threading.BrokenBarrierError:
            pass
        put_file(key, source, **how)

    monkeypatch.setattr(demo.dicom.store, "put_file", placing_together)
    origin = Origin("dicom", "XINGFU_CT", "127.0.0.1:1", "XINGFU-THC")
    outcomes: list[object] = []
    threads = [
        threading.Thread(target=lambda p=p: outcomes.append(demo.dicom.file(p, origin)))
        for p in paths
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(o.status for o in outcomes) == [0x0000, 0xC001]  # type: ignore[attr-defined]
    with demo.engine.connect() as conn:
        [(key, digest)] = conn.execute(
            select(schema.dicom_instance.c.storage_key, schema.dicom_instance.c.digest).where(
                schema.dicom_instance.c.sop_uid == sop_uid
            )
        ).all()
    stored = demo.dicom.store.path(key)
    assert stored.exists(), "the stored object's file is gone"
    assert blake3.blake3(stored.read_bytes()).hexdigest() == digest
    assert not demo.dicom._filing._held  # no lock kept for a UID nobody files any more


def test_a_large_object_whose_header_goes_past_its_first_megabyte_is_read_whole(
    demo: Context, tmp_path: Path
) -> None:
    """The header of a large object is read from its first megabyte when it ends there; here
    a private element of 1.5 MB comes before the patient's name and ID."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.add_new(0x00090010, "LO", "YILIAN TEST")
    ds.add_new(0x00091001, "OB", b"\x00" * 1_500_000)
    ds.PatientID, ds.PatientName = "110101199001010011", "Wang^Fang"
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert path.read_bytes().index(b"110101199001010011") > 1024 * 1024
    outcome = demo.dicom.file(path, Origin("dicom", "XINGFU_CT", "127.0.0.1:1", "XINGFU-THC"))
    assert outcome.ok, outcome.reason
    with demo.engine.connect() as conn:
        [row] = conn.execute(
            select(schema.dicom_instance).where(
                schema.dicom_instance.c.sop_uid == ds.SOPInstanceUID
            )
        )
    assert (row.dicom_patient_id, row.patient_name) == ("110101199001010011", "Wang^Fang")
