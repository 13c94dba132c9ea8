"""The HL7 v2 core service: outcomes, ACK codes, archive, duplicates, mapping into FHIR."""

from __future__ import annotations

import json

from sqlalchemy import select

from adapters.hl7v2.ingest import Origin
from records import inbound
from records.schema import audit_record
from security.principal import SYSTEM
from tests.adapters.hl7v2.conftest import WANG_ID, oru, segments
from tests.fhir_schema import assert_r4

MLLP = Origin("mllp", "127.0.0.1:5000")


def _ack_segments(reply):  # type: ignore[no-untyped-def]
    return [s.split("|") for s in reply.ack.decode("utf-8").split("\r") if s]


def _archived(ctx, archive_id):  # type: ignore[no-untyped-def]
    with ctx.engine.connect() as conn:
        return inbound.get(conn, archive_id)


def _stored(ctx, refs):  # type: ignore[no-untyped-def]
    out = []
    for ref in refs:
        rtype, rid = ref.split("/")
        stored = ctx.records.read(SYSTEM, rtype, rid)
        assert_r4(stored.json())
        out.append(stored.json())
    return out


def test_accepted_message_is_committed_with_provenance_and_archive(demo):
    reply = demo.hl7.receive(oru("LAB-1"), MLLP)
    assert reply.code == "AA" and reply.outcome == "accepted", reply.warnings
    msa = _ack_segments(reply)[1]
    assert msa[:3] == ["MSA", "AA", "LAB-1"]
    row = _archived(demo, reply.archive_id)
    assert row.outcome == "accepted" and row.raw == oru("LAB-1") and row.ack == reply.ack
    resources = _stored(demo, row.resources)
    kinds = [r["resourceType"] for r in resources]
    assert kinds == ["Patient", "Observation", "DiagnosticReport", "Provenance"]
    patient, obs, report, provenance = resources
    assert patient["id"] == "demo-wang-xiuying"  # matched by the resident identity number
    assert obs["valueQuantity"] == {
        "value": 5.8,
        "unit": "mmol/L",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/L",
    }
    assert obs["interpretation"][0]["coding"][0]["code"] == "H"
    assert obs["referenceRange"][0]["high"]["value"] == 5.2
    assert obs["code"]["text"] == "总胆固醇"
    assert report["result"] == [{"reference": f"Observation/{obs['id']}"}]
    assert report["status"] == "final"
    assert {t["reference"] for t in provenance["target"]} == {
        f"{r['resourceType']}/{r['id']}" for r in resources[:3]
    }
    assert provenance["entity"][0]["what"]["identifier"]["value"] == reply.archive_id
    assert provenance["agent"][0]["who"] == {"reference": "Organization/XINGFU-THC"}
    # and the audit chain names the message's resources in the same transaction
    with demo.engine.connect() as conn:
        actions = [r.action for r in conn.execute(select(audit_record.c.action))]
    assert "hl7-ingest" in actions


def test_repeat_gets_the_first_ack_and_stores_nothing_twice(demo):
    first = demo.hl7.receive(oru("LAB-2"), MLLP)
    again = demo.hl7.receive(oru("LAB-2"), MLLP)
    assert again.ack == first.ack and again.archive_id == first.archive_id
    found = demo.records.search(SYSTEM, "DiagnosticReport", [("code", "24331-1")])
    assert found.total == 1
    other = oru("LAB-2", obx=["OBX|1|NM|2093-3^总胆固醇^LN||6.1|mmol/L|<5.2|H|||F"])
    refused = demo.hl7.receive(other, MLLP)
    assert refused.code == "AR"
    err = [s for s in _ack_segments(refused) if s[0] == "ERR"][0]
    assert err[2].startswith("MSH^1^10") and err[3].startswith("205^")
    assert demo.records.search(SYSTEM, "Observation", [("code", "2093-3")]).total == 1
    assert _archived(demo, refused.archive_id).outcome == "rejected"


def test_a_repeat_with_other_segment_endings_is_the_same_message(demo):
    """A sender that retries over HTTP what it sent over MLLP (LF where MLLP had CR, say)."""
    import hashlib

    first = demo.hl7.receive(oru("LAB-2E"), MLLP)
    assert oru("LAB-2E").endswith(b"\r")  # a message ended the standard way keeps its hash
    assert (
        _archived(demo, first.archive_id).content_hash == hashlib.sha256(oru("LAB-2E")).hexdigest()
    )
    for variant in (b"\n", b"\r\n"):
        again = demo.hl7.receive(oru("LAB-2E").replace(b"\r", variant), MLLP)
        assert again.ack == first.ack and again.archive_id == first.archive_id
    assert demo.hl7.receive(oru("LAB-2E").rstrip(b"\r"), MLLP).archive_id == first.archive_id
    assert demo.records.search(SYSTEM, "DiagnosticReport", [("code", "24331-1")]).total == 1


def test_corrected_result_updates_the_same_resources(demo):
    demo.hl7.receive(oru("LAB-3"), MLLP)
    corrected = oru("LAB-4", obx=["OBX|1|NM|2093-3^总胆固醇^LN||5.1|mmol/L|<5.2|N|||C"])
    reply = demo.hl7.receive(corrected, MLLP)
    assert reply.code == "AA"
    found = demo.records.search(SYSTEM, "Observation", [("code", "2093-3")])
    assert found.total == 1
    obs = found.matches[0].json()
    assert obs["status"] == "corrected" and obs["valueQuantity"]["value"] == 5.1
    assert obs["meta"]["versionId"] == "2"


def test_bad_content_gets_ae_naming_segment_and_field_and_nothing_is_stored(demo):
    bad_date = oru(
        "LAB-5", pid=f"PID|1||XF0042^^^XINGFU_THC^MR~{WANG_ID}^^^^NNCHN||王^秀英||19521340|F"
    )
    reply = demo.hl7.receive(bad_date, MLLP)
    assert reply.code == "AE" and reply.outcome == "rejected"
    err = [s for s in _ack_segments(reply) if s[0] == "ERR"][0]
    assert err[2] == "PID^2^7" and err[3].startswith("102^")
    bad_number = oru("LAB-6", obx=["OBX|1|NM|2093-3^总胆固醇^LN||五点八|mmol/L|||||F"])
    reply = demo.hl7.receive(bad_number, MLLP)
    assert reply.code == "AE"
    assert [s for s in _ack_segments(reply) if s[0] == "ERR"][0][2] == "OBX^4^5"
    bad_id = oru("LAB-7", pid="PID|1||411325195203140420^^^^NNCHN||王^秀英||19520314|F")
    reply = demo.hl7.receive(bad_id, MLLP)
    assert reply.code == "AE" and "check character" in reply.error
    assert demo.records.search(SYSTEM, "DiagnosticReport", []).total == 0


def test_envelope_problems_get_ar(demo):
    cases = {
        b"hello, this is not HL7\r": ("MSH", "100"),
        oru("V-1", version="3.0"): ("MSH^1^12", "203"),
        oru("F-1", facility="UNKNOWN_CLINIC"): ("MSH^1^4", "204"),
        oru("C-1", charset="KLINGON"): ("MSH^1^18", "103"),
        segments(
            "MSH|^~\\&|X|XINGFU_THC|Y|Z|20261120||QRY^A19|Q-1|P|2.5", "QRD|20261120|R|I|Q-1"
        ): ("MSH^1^9", "200"),
        segments("MSH|^~\\&|X|XINGFU_THC|Y|Z|20261120||ADT^A99|A-1|P|2.5", "PID|1||1^^^X^MR"): (
            "MSH^1^9",
            "201",
        ),
    }
    for raw, (location, code) in cases.items():
        reply = demo.hl7.receive(raw, MLLP)
        assert reply.code == "AR", raw
        err = [s for s in _ack_segments(reply) if s[0] == "ERR"][0]
        assert err[2].startswith(location) and err[3].startswith(code + "^"), (raw, err)
        row = _archived(demo, reply.archive_id)
        assert row.outcome == "rejected" and row.raw == raw and row.error


def test_warnings_name_unmapped_fields_segments_and_z_segments(demo):
    raw = oru(
        "W-1",
        obx=[
            "OBX|1|NM|2093-3^总胆固醇^LN||5.8|mmol/L|<5.2|H|||F||||||||||||||X",
            "ZLB|1|分析仪内部数据",
        ],
    )
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AA" and reply.outcome == "accepted-with-warnings"
    assert "OBX-25 (segment 4): field not mapped" in reply.warnings
    assert any(w.startswith("ZLB (segment 5): Z-segment kept") for w in reply.warnings)
    errs = [s for s in _ack_segments(reply) if s[0] == "ERR"]
    assert all(e[4] == "W" for e in errs) and len(errs) == len(reply.warnings)
    row = _archived(demo, reply.archive_id)
    assert row.warnings == reply.warnings and "分析仪内部数据".encode() in row.raw


def test_enhanced_mode_acknowledgments(demo):
    commit = demo.hl7.receive(oru("E-1", accept_ack="AL", application_ack="NE"), MLLP)
    assert commit.code == "CA"
    refused = demo.hl7.receive(
        oru("E-2", version="9.9", accept_ack="AL", application_ack="NE"), MLLP
    )
    assert refused.code == "CR"
    silent = demo.hl7.receive(oru("E-3", accept_ack="NE", application_ack="NE"), MLLP)
    assert silent.ack is None and silent.outcome == "accepted"
    application = demo.hl7.receive(oru("E-4", accept_ack="NE", application_ack="AL"), MLLP)
    assert application.code == "AA"


def test_gb18030_message_reaches_fhir_unchanged(demo):
    raw = oru(
        "GB-1",
        charset="GB 18030-2000",
        version="2.4",
        codec="gb18030",
        obx=["OBX|1|TX|18844-1^心电图诊断^LN||窦性心律；ST段轻度压低\\.br\\建议复查||||||F"],
    )
    assert "窦性心律".encode("gb18030") in raw
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AA", reply.error
    assert reply.ack.decode("gb18030").split("\r")[0].endswith("|GB 18030-2000")
    obs = demo.records.search(SYSTEM, "Observation", [("code", "18844-1")]).matches[0].json()
    assert obs["valueString"] == "窦性心律；ST段轻度压低\n建议复查"


def test_per_sender_charset_when_msh18_is_empty(demo, settings):
    from adapters.hl7v2.ingest import Hl7Ingest, Settings

    ingest = Hl7Ingest(demo.records, Settings(sender_charsets={"XINGFU_THC": "gbk"}))
    raw = oru(
        "GBK-1",
        charset="",
        codec="gbk",
        pid=f"PID|1||{WANG_ID}^^^^NNCHN||王^秀英||19520314|F|||幸福镇幸福村^^示范市",
    )
    reply = ingest.receive(raw, MLLP)
    assert reply.code == "AA", reply.error
    patient = demo.records.read(SYSTEM, "Patient", "demo-wang-xiuying").json()
    assert "幸福镇幸福村" in json.dumps(patient, ensure_ascii=False)


def test_sample_ecg_from_the_repo(demo):
    from tests.adapters.hl7v2.conftest import SAMPLES

    raw = (SAMPLES / "ecg-oru-r01.hl7").read_bytes()
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AA" and reply.outcome == "accepted", reply.warnings
    leads = demo.records.search(SYSTEM, "Observation", [("code", "131330")]).matches
    sampled = leads[0].json()["valueSampledData"]
    assert sampled["period"] == 2.0 and sampled["dimensions"] == 1
    assert len(sampled["data"].split()) == 1250
    report = demo.records.search(SYSTEM, "DiagnosticReport", [("code", "11524-6")]).matches
    body = report[0].json()
    assert len(body["result"]) == 19  # 5 measurements, the sampling rate, 12 leads, diagnosis
    diagnosis = demo.records.search(SYSTEM, "Observation", [("code", "18844-1")]).matches[0]
    # an NTE after an OBX is that observation's note (v2-to-FHIR IG)
    assert diagnosis.json()["note"] == [{"text": "建议一年后复查；如有胸闷、心悸及时就诊。"}]
    assert diagnosis.json()["valueString"] == "窦性心律\n正常心电图"
    for stored in leads + report:
        assert_r4(stored.json())
