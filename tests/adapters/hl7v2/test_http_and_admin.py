"""HL7 v2 over HTTP, and the operator's view of the archive (API and `yilian hl7`)."""

from __future__ import annotations

from click.testing import CliRunner

from adapters.hl7v2.ingest import Origin
from gateway.cli import main
from tests.adapters.hl7v2.conftest import oru

HL7 = {"Content-Type": "x-application/hl7-v2+er7"}


def test_post_hl7_returns_the_ack(client, as_user):
    auth = {**as_user("doctor.xingfu"), **HL7}
    response = client.post("/hl7/v2", content=oru("HTTP-1"), headers=auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("x-application/hl7-v2+er7")
    assert response.headers["x-yilian-outcome"] == "accepted"
    assert "MSA|AA|HTTP-1" in response.text
    refused = client.post("/hl7/v2", content=oru("HTTP-2", facility="HEPING_THC"), headers=auth)
    assert "MSA|AR|HTTP-2" in refused.text and "does not match" in refused.text
    assert client.post("/hl7/v2", content=oru("HTTP-3"), headers=HL7).status_code == 401
    resident = client.post(
        "/hl7/v2", content=oru("HTTP-4"), headers={**as_user("resident.wang"), **HL7}
    )
    assert resident.status_code == 403
    empty = client.post("/hl7/v2", content=b"", headers=auth)
    assert empty.status_code == 400


def test_admin_lists_reads_and_reprocesses_archived_messages(client, as_user, demo):
    doctor = {**as_user("doctor.xingfu"), **HL7}
    client.post("/hl7/v2", content=oru("ADM-1"), headers=doctor)
    bad = oru("ADM-2", obx=["OBX|1|NM|2093-3^总胆固醇^LN||abc|mmol/L|||||F"])
    client.post("/hl7/v2", content=bad, headers=doctor)
    admin = as_user("admin")
    listing = client.get("/admin/messages", params={"outcome": "rejected"}, headers=admin).json()
    assert listing["total"] == 1
    row = listing["messages"][0]
    assert row["control_id"] == "ADM-2" and "OBX-5" in row["error"]
    shown = client.get(f"/admin/messages/{row['id']}", headers=admin).json()
    assert "总胆固醇" in shown["message"] and "MSA|AE|ADM-2" in shown["ack"]
    assert client.get("/admin/messages", headers=as_user("doctor.xingfu")).status_code == 403
    again = client.post(f"/admin/messages/{row['id']}/reprocess", headers=admin).json()
    assert again["outcome"] == "rejected" and again["id"] == row["id"]
    shown = client.get(f"/admin/messages/{row['id']}", headers=admin).json()
    assert shown["attempts"] == 2
    assert client.get("/admin/messages/nope", headers=admin).status_code == 404


def test_reprocess_after_the_sender_is_registered(client, as_user, demo):
    from security.principal import SYSTEM

    reply = demo.hl7.receive(oru("NEW-1", facility="NANWAN_CLINIC"), Origin("mllp"))
    assert reply.code == "AR"
    demo.records.create(
        SYSTEM,
        "Organization",
        {
            "resourceType": "Organization",
            "name": "南湾村卫生室",
            "identifier": [{"system": "urn:yilian:org", "value": "NANWAN_CLINIC"}],
        },
    )
    again = client.post(
        f"/admin/messages/{reply.archive_id}/reprocess", headers=as_user("admin")
    ).json()
    assert again["outcome"] == "accepted" and again["ack_code"] == "AA"


def test_cli_lists_shows_and_reprocesses(demo, settings, monkeypatch):
    reply = demo.hl7.receive(oru("CLI-1", version="1.0"), Origin("mllp"))
    monkeypatch.setenv("YILIAN_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("YILIAN_DATABASE_URL", settings.resolved_database_url)
    runner = CliRunner()
    listed = runner.invoke(main, ["hl7", "list", "--outcome", "rejected"])
    assert listed.exit_code == 0 and reply.archive_id in listed.output and "CLI-1" in listed.output
    shown = runner.invoke(main, ["hl7", "show", reply.archive_id])
    assert shown.exit_code == 0 and "MSA|AR|CLI-1" in shown.output and "2093-3" in shown.output
    redo = runner.invoke(main, ["hl7", "reprocess", reply.archive_id])
    assert redo.exit_code == 1 and "rejected" in redo.output
    missing = runner.invoke(main, ["hl7", "show", "no-such-id"])
    assert missing.exit_code != 0
