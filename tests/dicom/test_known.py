"""Staged filing (``dicom.known``): an instance of a study, series and patient the record holds is
written by the writer with others' after one check of its ground, and files exactly as the
one-at-a-time unit would; when its ground moved, the one-at-a-time unit decides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom import quarantine
from dicom.ingest import Origin, Outcome
from gateway.context import Context
from records import schema, staging
from security.principal import Principal, Role

ORIGIN = Origin("dicom", "XINGFU_CT", "127.0.0.1:1", "XINGFU-THC")
STUDY, SERIES = generate_uid(), generate_uid()
# an object's size varies with the length of its fresh SOP Instance UID (padded to even)
PER_INSTANCE = {"sop_uid", "instance_number", "storage_key", "digest", "size", "received"}


def instance(folder: Path, number: int, **values: Any) -> Path:
    """A CT of ``STUDY`` / ``SERIES`` (unless ``values`` say otherwise) with a fresh SOP
    Instance UID."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm", download=False)))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = number
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    folder.mkdir(exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SOP Instance UIDs whose index rows the staged path wrote."""
    written: list[str] = []
    write = staging.write

    def spy(conn: Any, units: list[staging.Staged[Any]]) -> None:
        write(conn, units)
        written.extend(r["sop_uid"] for u in units for r in u.extra.get("dicom_instance", []))

    monkeypatch.setattr(staging, "write", spy)
    return written


def index_row(ctx: Context, sop_uid: str) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(schema.dicom_instance).where(schema.dicom_instance.c.sop_uid == sop_uid)
        ).one()
    return dict(row._mapping)


def audit_of(ctx: Context, sop_uid: str) -> tuple[str, str | None, str]:
    """(action, patient, resources) of the audit record the filing of ``sop_uid`` wrote: the
    newest dicom-store record (filings here run one after the other)."""
    t = schema.audit_record
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(t.c.action, t.c.patient, t.c.resources)
            .where(t.c.action == "dicom-store")
            .order_by(t.c.seq.desc())
            .limit(1)
        ).one()
    return row[0], row[1], row[2]


def test_an_instance_of_a_known_study_files_staged_exactly_as_one_at_a_time(
    demo: Context, tmp_path: Path, staged: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = demo.dicom.file(instance(tmp_path, 1), ORIGIN)
    assert first.result == "stored" and staged == []  # the study was new: one at a time
    second_path = instance(tmp_path, 2)
    second = demo.dicom.file(second_path, ORIGIN)
    assert second.result == "stored" and staged == [second.sop_uid]
    second_audit = audit_of(demo, str(second.sop_uid))

    monkeypatch.setattr(demo.dicom, "_staged", lambda *args: None)  # one at a time only
    third = demo.dicom.file(instance(tmp_path, 3), ORIGIN)
    assert staged == [second.sop_uid]
    third_audit = audit_of(demo, str(third.sop_uid))

    def same(outcome: Outcome) -> tuple[Any, ...]:
        return (outcome.result, outcome.study_uid, outcome.series_uid, outcome.resources)

    assert same(second) == same(third)
    assert second.resources == [r for r in first.resources if r.startswith("ImagingStudy/")]
    row2, row3 = index_row(demo, str(second.sop_uid)), index_row(demo, str(third.sop_uid))
    assert {k: v for k, v in row2.items() if k not in PER_INSTANCE} == {
        k: v for k, v in row3.items() if k not in PER_INSTANCE
    }
    assert row2["instance_number"] == 2 and row2["patient_ref"]
    assert demo.dicom.store.exists(row2["storage_key"])
    for row in (row2, row3):  # the size either way is the stored object's
        assert row["size"] == demo.dicom.store.path(row["storage_key"]).stat().st_size
    assert second_audit == third_audit and second_audit[1] == row2["patient_ref"]


def test_when_the_patient_changed_the_one_at_a_time_unit_decides_and_the_next_is_staged(
    demo: Context, tmp_path: Path, staged: list[str]
) -> None:
    demo.dicom.file(instance(tmp_path, 1), ORIGIN)
    demo.dicom.file(instance(tmp_path, 2), ORIGIN)  # the ground is known now
    assert len(staged) == 1
    patient_id = index_row(demo, staged[0])["patient_ref"]
    admin = Principal("admin", Role.SYSTEM)
    body = demo.records.read(admin, "Patient", patient_id).json()  # type: ignore[union-attr]
    body["gender"] = "other"
    demo.records.update(admin, "Patient", patient_id, body)  # a new version behind its back

    third = demo.dicom.file(instance(tmp_path, 3), ORIGIN)
    assert third.result == "stored" and len(staged) == 1  # stale: decided one at a time
    assert index_row(demo, str(third.sop_uid))["patient_ref"] == patient_id
    fourth = demo.dicom.file(instance(tmp_path, 4), ORIGIN)
    assert fourth.result == "stored" and staged[-1] == fourth.sop_uid  # read again: staged


def test_a_new_series_of_a_known_study_is_written_one_at_a_time_into_the_imaging_study(
    demo: Context, tmp_path: Path, staged: list[str]
) -> None:
    demo.dicom.file(instance(tmp_path, 1), ORIGIN)
    demo.dicom.file(instance(tmp_path, 2), ORIGIN)
    other = demo.dicom.file(instance(tmp_path, 1, SeriesInstanceUID=generate_uid()), ORIGIN)
    assert other.result == "stored" and other.sop_uid not in staged
    admin = Principal("admin", Role.SYSTEM)
    study = demo.records.read(admin, *other.resources[-2].split("/")).json()  # type: ignore[union-attr]
    assert other.series_uid in {s["uid"] for s in study["series"]}


def test_a_repeat_and_a_conflict_of_a_known_study_are_told_apart_as_before(
    demo: Context, tmp_path: Path, staged: list[str]
) -> None:
    demo.dicom.file(instance(tmp_path, 1), ORIGIN)
    path = instance(tmp_path, 2)
    data = path.read_bytes()
    stored = demo.dicom.file(path, ORIGIN)
    assert staged == [stored.sop_uid]
    again = tmp_path / "again.dcm"
    again.write_bytes(data)
    assert demo.dicom.file(again, ORIGIN).result == "repeat"
    changed = instance(tmp_path, 2, SOPInstanceUID=stored.sop_uid, PatientSex="F")
    conflict = demo.dicom.file(changed, ORIGIN)
    assert conflict.status == 0xC001
    assert staged == [stored.sop_uid]  # neither was written staged
    assert index_row(demo, str(stored.sop_uid))["digest"] == stored_digest(demo, stored)
    assert [e.sop_uid for e in quarantine.entries(demo.engine)] == [stored.sop_uid]


def stored_digest(ctx: Context, outcome: Outcome) -> str:
    import blake3

    key = index_row(ctx, str(outcome.sop_uid))["storage_key"]
    with ctx.dicom.store.open(key) as f:
        return blake3.blake3(f.read()).hexdigest()


def test_a_staged_instance_the_disk_cannot_keep_is_not_indexed_and_is_quarantined(
    demo: Context, tmp_path: Path, staged: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    demo.dicom.file(instance(tmp_path, 1), ORIGIN)
    demo.dicom.file(instance(tmp_path, 2), ORIGIN)
    put_file, failed = demo.dicom.store.put_file, list[str]()

    def fails(key: str, source: Path, **how: bool) -> None:
        if not failed:
            failed.append(key)
            raise OSError(5, "Input/output error")
        put_file(key, source, **how)

    monkeypatch.setattr(demo.dicom.store, "put_file", fails)
    outcome = demo.dicom.file(instance(tmp_path, 3), ORIGIN)
    assert outcome.status == 0xA700
    with demo.engine.connect() as conn:
        held = conn.execute(
            select(schema.dicom_instance.c.sop_uid).where(
                schema.dicom_instance.c.sop_uid == outcome.sop_uid
            )
        ).all()
    assert held == []
    assert [e.sop_uid for e in quarantine.entries(demo.engine)] == [outcome.sop_uid]


def test_instances_arriving_together_are_written_in_one_group_and_a_repeat_among_them_is_told(
    demo: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from sqlalchemy import Connection

    demo.dicom.file(instance(tmp_path, 1), ORIGIN)
    repeated = instance(tmp_path, 2)
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(repeated.read_bytes())
    assert demo.dicom.file(repeated, ORIGIN).result == "stored"  # the ground is known now
    groups: list[list[str]] = []
    write = staging.write

    def spy(conn: Any, units: list[staging.Staged[Any]]) -> None:
        write(conn, units)
        groups.append([r["sop_uid"] for u in units for r in u.extra.get("dicom_instance", [])])

    monkeypatch.setattr(staging, "write", spy)
    writing, release = threading.Event(), threading.Event()

    def slow(conn: Connection) -> None:  # holds the writer while the others arrive
        writing.set()
        assert release.wait(30)

    committer, queued = demo.dicom.committer, threading.Semaphore(0)
    enqueue = committer.enqueue

    def counted(work: Any) -> Any:
        future = enqueue(work)
        queued.release()
        return future

    monkeypatch.setattr(committer, "enqueue", counted)
    holder = threading.Thread(target=committer.submit, args=(slow,))
    holder.start()
    assert writing.wait(30)
    paths = [instance(tmp_path, 3), instance(tmp_path, 4), copy]
    outcomes: dict[Path, Outcome] = {}
    threads = [
        threading.Thread(target=lambda p=p: outcomes.update({p: demo.dicom.file(p, ORIGIN)}))
        for p in paths
    ]
    for thread in threads:  # one after the other: the repeat is the last in the queue
        thread.start()
        assert queued.acquire(timeout=30)
    release.set()
    for thread in [holder, *threads]:
        thread.join(30)
    assert [outcomes[p].result for p in paths] == ["stored", "stored", "repeat"]
    assert sorted(groups[0]) == sorted(str(outcomes[p].sop_uid) for p in paths[:2])
    assert len(groups) == 1
