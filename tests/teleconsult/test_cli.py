"""``yilian consortium list|endpoint`` and ``yilian outbox list|show|requeue``."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.context import Context
from gateway.settings import Settings
from records import outbox
from records.outbox import Backoff


@pytest.fixture
def cli(demo: Context, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("YILIAN_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("YILIAN_DATABASE_URL", settings.resolved_database_url)
    return CliRunner()


def test_an_operator_points_the_directory_at_a_member_and_switches_it_off(cli, demo):
    done = cli.invoke(
        main,
        [
            "consortium",
            "endpoint",
            "CITY_FIRST",
            "--fhir",
            "https://city-first.example:8443/fhir",
            "--dicom",
            "dicoms://CITY_PACS@pacs.city-first.example:2762",
        ],
    )
    assert done.exit_code == 0, done.output
    listed = cli.invoke(main, ["consortium", "list"])
    assert "CITY-FIRST       fhir   on  https://city-first.example:8443/fhir" in listed.output
    assert "dicoms://CITY_PACS@pacs.city-first.example:2762" in listed.output
    assert "心电诊断中心" in listed.output and "mon-fri 08:00-17:30" in listed.output
    off = cli.invoke(main, ["consortium", "endpoint", "CITY_FIRST", "--off"])
    assert off.exit_code == 0, off.output
    assert "CITY-FIRST       fhir   off" in cli.invoke(main, ["consortium", "list"]).output
    bad = cli.invoke(main, ["consortium", "endpoint", "CITY_FIRST", "--dicom", "dicom://x"])
    assert bad.exit_code == 1 and "dicoms://AE_TITLE@host:port" in bad.output
    clear = ["--dicom", "dicom://CITY_PACS@pacs.city-first.example:104"]
    plain = cli.invoke(main, ["consortium", "endpoint", "CITY_FIRST", *clear])
    assert plain.exit_code == 1 and "DICOM over TLS" in plain.output
    http = cli.invoke(main, ["consortium", "endpoint", "CITY_FIRST", "--fhir", "http://x/fhir"])
    assert http.exit_code == 1 and "https:// URL" in http.output
    unknown = cli.invoke(main, ["consortium", "endpoint", "NOWHERE", "--fhir", "https://x"])
    assert unknown.exit_code == 1 and "not a member" in unknown.output


def test_an_operator_lists_reads_and_requeues_a_dead_letter(cli, demo):
    with demo.engine.begin() as conn:
        entry_id = outbox.enqueue(
            conn,
            destination="CITY-FIRST-fhir",
            channel="fhir",
            topic="request",
            payload={"task": "t-1"},
            subject="t-1",
        )
    claimed = outbox.claim(demo.engine, "w", Backoff().delay(1))
    assert claimed is not None
    with demo.engine.begin() as conn:
        outbox.failed(
            conn,
            claimed,
            "TLS refused: certificate verify failed",
            permanent=True,
            backoff=Backoff(),
        )
    listed = cli.invoke(main, ["outbox", "list", "--status", "dead"])
    assert listed.exit_code == 0, listed.output
    assert "dead 1" in listed.output and entry_id in listed.output
    assert "certificate verify failed" in listed.output
    shown = cli.invoke(main, ["outbox", "show", entry_id])
    assert "Endpoint/CITY-FIRST-fhir" in shown.output and "Task/t-1" in shown.output
    again = cli.invoke(main, ["outbox", "requeue", entry_id])
    assert again.exit_code == 0 and "pending again" in again.output
    row = outbox.get(demo.engine, entry_id)
    assert row is not None and row.status == "pending" and row.attempts == 0
    twice = cli.invoke(main, ["outbox", "requeue", entry_id])
    assert twice.exit_code == 1 and "not a dead or cancelled" in twice.output
    assert cli.invoke(main, ["outbox", "show", "nothing"]).exit_code == 1


def test_metrics_show_the_queue(client, demo):
    with demo.engine.begin() as conn:
        outbox.enqueue(conn, destination="d", channel="fhir", topic="status", payload={"task": "t"})
    text = client.get("/metrics").text
    assert 'yilian_outbox_depth{status="pending"} 1' in text
    assert "yilian_outbox_oldest_age_seconds " in text
