"""ORM^O01 and OML^O21 -> ServiceRequest, through the whole ingest (parse, map, store, ACK)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.hl7v2.ingest import Origin
from gateway.demo import resident_id
from records import inbound
from security.principal import SYSTEM
from tests.fhir_schema import assert_r4

MLLP = Origin("mllp", "127.0.0.1")
WANG_ID = resident_id("411325", "1952-03-14", "042")  # demo patient 王秀英
PID = f"PID|1||XF0042^^^XINGFU_THC^MR~{WANG_ID}^^^^NNCHN||王^秀英||19520314|F"
PV1 = "PV1|1|O|全科门诊^^^XINGFU_THC||||0012^李^卫民||||||||||||V20261120-07"
PLACER = "urn:yilian:order:XINGFU_THC:plac"  # the system ORU results use too
PUBLIC = Path(__file__).parents[2] / "data" / "hl7" / "public"


def message(kind: str, control_id: str, *lines: str, charset: str = "UNICODE UTF-8") -> bytes:
    msh = (
        f"MSH|^~\\&|HIS|XINGFU_THC|YILIAN|COUNTY_HOSP|20261120150000+0800||{kind}|"
        f"{control_id}|P|2.5.1||||||{charset}"
    )
    codec = "gb18030" if charset.startswith("GB") else "utf-8"
    return "\r".join([msh, *lines]).encode(codec) + b"\r"


def new_ecg_order(control_id: str = "ORD-MSG-1") -> bytes:
    return message(
        "ORM^O01^ORM_O01",
        control_id,
        PID,
        PV1,
        "ORC|NW|ORD-1001||GRP-77|||||20261120145500+0800|||0012^李^卫民^^^^^^XINGFU_THC",
        "OBR|1|ORD-1001||11524-6^十二导联心电图^LN||||||||||||||||||||EC|||"
        "^^^20261121090000+0800^^S||||I20.9^心绞痛^I10",
        "NTE|1||患者胸闷三天，活动后加重，请上级医院远程诊断",
        "DG1|1||I10^原发性高血压^I10",
    )


def service_requests(ctx, placer: str) -> list[Any]:  # type: ignore[no-untyped-def]
    found = ctx.records.search(SYSTEM, "ServiceRequest", [("identifier", f"{PLACER}|{placer}")])
    for stored in found.matches:
        assert_r4(stored.json())
    return list(found.matches)


def stored(ctx, archive_id: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    with ctx.engine.connect() as conn:
        row = inbound.get(conn, archive_id)
    assert row is not None
    out = []
    for ref in row.resources:
        rtype, rid = ref.split("/")
        body = ctx.records.read(SYSTEM, rtype, rid).json()
        assert_r4(body)
        out.append(body)
    return out


def test_new_order_then_cancel_updates_the_same_service_request(demo):
    reply = demo.hl7.receive(new_ecg_order(), MLLP)
    assert reply.code == "AA" and reply.outcome == "accepted", reply.warnings
    resources = stored(demo, reply.archive_id)
    kinds = [r["resourceType"] for r in resources]
    assert kinds == ["Patient", "Encounter", "ServiceRequest", "Provenance"]
    patient, encounter, order, provenance = resources
    assert patient["id"] == "demo-wang-xiuying"
    assert order["status"] == "active" and order["intent"] == "order"
    assert order["code"]["coding"][0] == {
        "code": "11524-6",
        "system": "http://loinc.org",
        "display": "十二导联心电图",
    }
    assert order["subject"] == {"reference": "Patient/demo-wang-xiuying"}
    assert order["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert order["priority"] == "stat"
    assert order["authoredOn"] == "2026-11-20T14:55:00+08:00"
    assert order["occurrenceDateTime"] == "2026-11-21T09:00:00+08:00"
    assert order["requester"]["display"] == "李卫民"
    assert [r["text"] for r in order["reasonCode"]] == ["心绞痛", "原发性高血压"]
    assert order["note"] == [{"text": "患者胸闷三天，活动后加重，请上级医院远程诊断"}]
    assert order["requisition"]["value"] == "GRP-77"
    assert order["category"][0]["coding"][0]["code"] == "EC"
    assert {"system": PLACER, "value": "ORD-1001"}.items() <= order["identifier"][0].items()
    assert provenance["occurredDateTime"] == "2026-11-20T14:55:00+08:00"

    cancel = message(
        "ORM^O01^ORM_O01",
        "ORD-MSG-2",
        PID,
        "ORC|CA|ORD-1001|||||||20261120160000+0800|||||||PT^患者拒绝检查^XINGFU",
    )
    reply = demo.hl7.receive(cancel, MLLP)
    assert reply.code == "AA", reply.warnings
    (again,) = service_requests(demo, "ORD-1001")
    body = again.json()
    assert again.res_id == order["id"] and again.version == 2
    assert body["status"] == "revoked"
    assert body["code"] == order["code"]  # what the cancel does not carry is kept
    assert body["authoredOn"] == order["authoredOn"]  # ORC-9 of a cancel is not the order's
    assert body["extension"][0]["valueCodeableConcept"]["text"] == "患者拒绝检查"


@pytest.mark.parametrize(
    ("control", "order_status", "expected"),
    [
        ("HD", "", "on-hold"),
        ("RL", "", "active"),
        ("SC", "CM", "completed"),
        ("XO", "", "active"),
        ("DC", "IP", "revoked"),  # discontinue decides, whatever ORC-5 says
        ("SC", "ER", "entered-in-error"),
    ],
)
def test_order_control_and_status_table(demo, control, order_status, expected):
    assert demo.hl7.receive(new_ecg_order(), MLLP).code == "AA"
    change = message(
        "ORM^O01^ORM_O01",
        f"ORD-MSG-{control}",
        PID,
        f"ORC|{control}|ORD-1001|FIL-88||{order_status}||||20261120170000+0800",
    )
    reply = demo.hl7.receive(change, MLLP)
    assert reply.code == "AA", reply.error
    (order,) = service_requests(demo, "ORD-1001")
    assert order.json()["status"] == expected
    # the filler number the update brought is kept with the placer number
    values = {i["value"] for i in order.json()["identifier"]}
    assert values == {"ORD-1001", "FIL-88"}


def test_oml_in_gb18030_keeps_the_chinese_and_names_the_unmapped_specimen(demo):
    raw = message(
        "OML^O21^OML_O21",
        "OML-GB-1",
        PID,
        "ORC|NW|LAB-3001|||||||20261120153000+0800|||0012^李^卫民",
        "TQ1|1|1|||||20261121080000+0800|20261121100000+0800|A||空腹采血",
        "OBR|1|LAB-3001||58410-2^血常规^LN",
        "NTE|1||发热待查，请加做C反应蛋白",
        "SPM|1|SP-3001||BLD^静脉血^HL70487",
        charset="GB 18030-2000",
    )
    assert "血常规".encode("gb18030") in raw
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AA"
    assert reply.warnings == ["SPM (segment 7): segment not mapped"]  # named, not dropped
    (order,) = service_requests(demo, "LAB-3001")
    body = order.json()
    assert body["code"]["text"] == "血常规"
    assert body["priority"] == "asap"
    assert body["quantityQuantity"] == {"value": 1}
    assert body["occurrencePeriod"] == {
        "start": "2026-11-21T08:00:00+08:00",
        "end": "2026-11-21T10:00:00+08:00",
    }
    assert [n["text"] for n in body["note"]] == ["发热待查，请加做C反应蛋白", "空腹采血"]
    assert body["subject"] == {"reference": "Patient/demo-wang-xiuying"}


def test_public_simple_hl7_orm_sample(demo):
    """The ORM^O01 of the npm package simple-hl7 (v2.3, LF line ends), MSH-4 made ours."""
    raw = (PUBLIC / "simple-hl7_orm.hl7").read_bytes()
    raw = raw.replace(b"|MedCenter|LIS|", b"|XINGFU_THC|LIS|", 1)
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AA", reply.error
    resources = stored(demo, reply.archive_id)
    kinds = [r["resourceType"] for r in resources]
    assert kinds == ["Patient", "Encounter", "ServiceRequest", "Provenance"]
    patient, encounter, order, _ = resources
    assert encounter["identifier"][0]["value"] == "2"  # PV1-19
    assert order["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert patient["name"][0]["family"] == "Jones"
    assert order["code"]["coding"][0]["code"] == "003038"
    assert order["code"]["text"] == "Urinalysis"
    assert order["status"] == "active"
    assert order["identifier"][0]["value"] == "20060307110114"
    assert order["subject"] == {"reference": f"Patient/{patient['id']}"}
    # OBR-7 (observation date) does not belong in an order: named, not silently dropped
    assert any(w.startswith("OBR-7 ") for w in reply.warnings)


def test_public_hl7apy_oml_o33_sample(demo):
    """The specimen-first OML^O33 of hl7apy (v2.5, processing ID D), MSH-4 made ours."""
    raw = (PUBLIC / "hl7apy_oml-o33.hl7").read_bytes()
    raw = raw.replace(b"|SENDING FAC|", b"|XINGFU_THC|", 1)
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AA", reply.error
    orders = [r for r in stored(demo, reply.archive_id) if r["resourceType"] == "ServiceRequest"]
    assert len(orders) == 1
    assert orders[0]["code"]["coding"][0]["code"] == "TPO"
    assert orders[0]["priority"] == "routine"  # TQ1-9
    assert orders[0]["status"] == "active"  # NW with ORC-5 SC (in process, scheduled)
    assert any("SPM (segment 4): segment not mapped" in w for w in reply.warnings)


def test_unknown_order_control_is_refused_naming_orc_1(demo):
    raw = message("ORM^O01^ORM_O01", "ORD-BAD-1", PID, "ORC|ZZ|ORD-1", "OBR|1|ORD-1||X^检查")
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AE"
    assert "ORC-1" in (reply.error or "") and "'ZZ'" in (reply.error or "")
    assert b"ERR||ORC^3^1|103" in (reply.ack or b"")


def test_new_order_without_obr_or_numbers_is_refused(demo):
    no_obr = message("ORM^O01^ORM_O01", "ORD-BAD-2", PID, "ORC|NW|ORD-2")
    reply = demo.hl7.receive(no_obr, MLLP)
    assert reply.code == "AE" and "OBR" in (reply.error or "")
    no_number = message("ORM^O01^ORM_O01", "ORD-BAD-3", PID, "ORC|NW", "OBR|1|||X^检查")
    reply = demo.hl7.receive(no_number, MLLP)
    assert reply.code == "AE" and "ORC-2" in (reply.error or "")


def test_unsupported_order_event_is_rejected_naming_msh_9(demo):
    raw = message("ORM^O02^ORM_O02", "ORD-BAD-4", PID, "ORC|NW|ORD-3", "OBR|1|ORD-3||X^检查")
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AR" and reply.outcome == inbound.REJECTED
    assert b"ERR||MSH^1^9^^2|201" in (reply.ack or b"")


def test_order_and_its_result_share_the_order_number_system(demo):
    assert demo.hl7.receive(new_ecg_order(), MLLP).code == "AA"
    result = (
        "MSH|^~\\&|ECG|XINGFU_THC|YILIAN|COUNTY_HOSP|20261121093000+0800||ORU^R01|ECG-1|P|2.5.1\r"
        f"{PID}\rOBR|1|ORD-1001||11524-6^十二导联心电图^LN|||20261121090000+0800\r"
        "OBX|1|NM|8867-4^心率^LN||72|/min|||||F\r"
    ).encode()
    assert demo.hl7.receive(result, MLLP).code == "AA"
    found = demo.records.search(SYSTEM, "DiagnosticReport", [("identifier", f"{PLACER}|ORD-1001")])
    assert found.total == 1 and len(service_requests(demo, "ORD-1001")) == 1
