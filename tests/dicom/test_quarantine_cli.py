"""``yilian dicom quarantine list|show|retry``: the operator sees why an object was not filed and
files it again once the cause is gone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from sqlalchemy import select

from dicom import quarantine
from dicom.ingest import Origin
from gateway.cli import main
from gateway.context import Context
from gateway.settings import Settings
from records import schema


@pytest.fixture
def cli(demo: Context, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("YILIAN_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("YILIAN_DATABASE_URL", settings.resolved_database_url)
    return CliRunner()


def ct_copy(folder: Path, **values: str) -> Path:
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm", download=False)))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    path = folder / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_refused_object_is_listed_shown_and_stays_refused_on_retry(
    cli: CliRunner, demo: Context, tmp_path: Path
) -> None:
    origin = Origin("dicom", "XINGFU_CT", "127.0.0.1:4000", "XINGFU-THC")
    outcome = demo.dicom.file(ct_copy(tmp_path, SeriesInstanceUID=""), origin)
    assert outcome.result == "refused" and "SeriesInstanceUID" in (outcome.reason or "")
    [entry] = quarantine.entries(demo.engine)
    listed = cli.invoke(main, ["dicom", "quarantine", "list"])
    assert (
        listed.exit_code == 0 and entry.id in listed.output and "SeriesInstanceUID" in listed.output
    )
    shown = cli.invoke(main, ["dicom", "quarantine", "show", entry.id])
    assert shown.exit_code == 0 and "XINGFU_CT" in shown.output and entry.sop_uid in shown.output
    again = cli.invoke(main, ["dicom", "quarantine", "retry", entry.id])
    assert again.exit_code == 1 and "refused" in again.output
    assert quarantine.get(demo.engine, entry.id).attempts == 2
    missing = cli.invoke(main, ["dicom", "quarantine", "show", "no-such-id"])
    assert missing.exit_code != 0


def test_retry_files_an_object_kept_after_a_failure(
    cli: CliRunner, demo: Context, tmp_path: Path
) -> None:
    kept = tmp_path / "kept.dcm"
    shutil.copyfile(ct_copy(tmp_path), kept)
    qid = quarantine.put(
        demo.engine,
        demo.dicom.store,
        kept,
        origin="dicom",
        calling_ae="XINGFU_CT",
        peer="127.0.0.1:4000",
        sop_uid=None,
        sop_class=None,
        reason="internal error: OperationalError",
    )
    done = cli.invoke(main, ["dicom", "quarantine", "retry", qid])
    assert done.exit_code == 0 and "stored" in done.output
    entry = quarantine.get(demo.engine, qid)
    assert entry.status == quarantine.RELEASED and not demo.dicom.store.exists(entry.storage_key)
    with demo.engine.connect() as conn:
        [row] = conn.execute(select(schema.dicom_instance)).all()
    assert row.org_id == "XINGFU-THC" and demo.dicom.store.exists(row.storage_key)
    assert quarantine.entries(demo.engine) == []
