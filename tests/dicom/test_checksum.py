"""Content digests (``dicom.checksum``): BLAKE3 for what is filed now, and the SHA-256 of rows
written before migration 0006 still tells a repeat from a conflict."""

from __future__ import annotations

import hashlib
from pathlib import Path

import blake3
import pytest
from alembic import command
from sqlalchemy import insert, select, text, update

from dicom import checksum
from gateway.context import Context
from records import db, schema
from tests.dicom.test_known import ORIGIN, index_row, instance


def test_a_file_is_digested_in_the_algorithm_asked(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # more than one read of a megabyte
    path = tmp_path / "object"
    path.write_bytes(data)
    assert checksum.of_file(path) == (len(data), blake3.blake3(data).hexdigest())
    assert checksum.of_file(path, "sha256") == (len(data), hashlib.sha256(data).hexdigest())
    assert checksum.of_bytes(data) == blake3.blake3(data).hexdigest()
    with pytest.raises(ValueError, match="md5"):
        checksum.hasher("md5")


def test_new_index_rows_say_blake3(demo: Context, tmp_path: Path) -> None:
    path = instance(tmp_path / "in", 1)
    data = path.read_bytes()
    outcome = demo.dicom.file(path, ORIGIN)
    assert outcome.result == "stored"
    row = index_row(demo, str(outcome.sop_uid))
    assert row["digest_alg"] == "blake3"
    assert row["digest"] == blake3.blake3(data).hexdigest()


def _as_legacy_row(ctx: Context, sop_uid: str) -> None:
    """Make the row of ``sop_uid`` look as one written before 0006: the SHA-256 of its object."""
    row = index_row(ctx, sop_uid)
    with ctx.dicom.store.open(row["storage_key"]) as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    with ctx.engine.begin() as conn:
        conn.execute(
            update(schema.dicom_instance)
            .where(schema.dicom_instance.c.sop_uid == sop_uid)
            .values(digest=sha, digest_alg="sha256")
        )


@pytest.mark.parametrize("file_gone", [False, True], ids=["file-kept", "file-gone"])
def test_a_repeat_of_an_instance_indexed_with_sha256_is_a_repeat_and_other_bytes_a_conflict(
    demo: Context, tmp_path: Path, file_gone: bool
) -> None:
    first = instance(tmp_path / "in", 1)
    data = first.read_bytes()
    stored = demo.dicom.file(first, ORIGIN)
    sop_uid = str(stored.sop_uid)
    _as_legacy_row(demo, sop_uid)
    key = index_row(demo, sop_uid)["storage_key"]
    if file_gone:  # the repeat puts it back
        demo.dicom.store.path(key).unlink()

    again = tmp_path / "again.dcm"
    again.write_bytes(data)
    assert demo.dicom.file(again, ORIGIN).result == "repeat"
    assert demo.dicom.store.path(key).read_bytes() == data

    other = instance(tmp_path / "other", 2, SOPInstanceUID=sop_uid, PatientSex="F")
    conflict = demo.dicom.file(other, ORIGIN)
    assert conflict.status == 0xC001
    assert demo.dicom.store.path(key).read_bytes() == data  # the stored object is kept
    row = index_row(demo, sop_uid)
    assert (row["digest_alg"], row["digest"]) == ("sha256", hashlib.sha256(data).hexdigest())


def test_migration_0006_marks_the_rows_before_it_sha256_and_refuses_to_go_back_over_blake3(
    fresh_database: str,
) -> None:
    engine = db.make_engine(fresh_database)
    try:
        config = db._alembic_config(engine)
        command.upgrade(config, "0005")
        columns = {c.name: c for c in schema.dicom_instance.c if c.name != "digest_alg"}
        legacy = {name: None for name, c in columns.items() if c.nullable}
        legacy |= {
            "sop_uid": "1.2.3.4",
            "sop_class": "1.2.840.10008.5.1.4.1.1.2",
            "study_uid": "1.2.3",
            "series_uid": "1.2.3.1",
            "transfer_syntax": "1.2.840.10008.1.2.1",
            "storage_key": "studies/1.2.3/1.2.3.1/1.2.3.4.dcm",
            "size": 10,
            "digest": "a" * 64,
            "header": "{}",
        }
        with engine.begin() as conn:
            conn.execute(
                text(
                    f"INSERT INTO dicom_instance ({', '.join(legacy)}, received) "
                    f"VALUES ({', '.join(':' + k for k in legacy)}, CURRENT_TIMESTAMP)"
                ),
                legacy,
            )
        command.upgrade(config, "head")
        with engine.connect() as conn:
            alg = conn.execute(select(schema.dicom_instance.c.digest_alg)).scalar_one()
        assert alg == "sha256"

        with engine.begin() as conn:
            row = {**legacy, "sop_uid": "1.2.3.5", "digest_alg": "blake3"}
            row["received"] = conn.execute(select(schema.dicom_instance.c.received)).scalar_one()
            conn.execute(insert(schema.dicom_instance).values(**row))
        with pytest.raises(RuntimeError, match="1 DICOM index rows hold BLAKE3"):
            command.downgrade(config, "0005")
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM dicom_instance WHERE sop_uid = '1.2.3.5'"))
        command.downgrade(config, "0005")
        with engine.connect() as conn:
            names = set(conn.execute(text("SELECT * FROM dicom_instance")).keys())
        assert "digest_alg" not in names and "digest" in names
    finally:
        engine.dispose()
