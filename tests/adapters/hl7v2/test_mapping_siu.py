"""SIU^S12 (remote outpatient booking) and its follow-ups -> Appointment, through the ingest."""

from __future__ import annotations

from typing import Any

from adapters.hl7v2.ingest import Origin
from gateway.demo import resident_id
from records import inbound
from security.principal import SYSTEM
from tests.fhir_schema import assert_r4

MLLP = Origin("mllp", "127.0.0.1")
WANG_ID = resident_id("411325", "1952-03-14", "042")  # demo patient 王秀英
PID = f"PID|1||XF0042^^^XINGFU_THC^MR~{WANG_ID}^^^^NNCHN||王^秀英||19520314|F"
FILLER = "urn:yilian:appointment:XINGFU_THC:fill"


def message(
    event: str, control_id: str, *lines: str, charset: str = "UNICODE UTF-8", version: str = "2.5.1"
) -> bytes:
    msh = (
        f"MSH|^~\\&|HIS|XINGFU_THC|YILIAN|COUNTY_HOSP|20261120160000+0800||SIU^{event}^SIU_S12|"
        f"{control_id}|P|{version}||||||{charset}"
    )
    codec = "gb18030" if charset.startswith("GB") else "utf-8"
    return "\r".join([msh, *lines]).encode(codec) + b"\r"


def sch(reason: str = "NEW^新预约^HL70306", **extra: str) -> str:
    fields = [""] * 28
    fields[:3] = ["SCH", "APT-7001", "RAPT-7001"]  # SCH-1 placer, SCH-2 filler appointment ID
    fields[6] = reason  # SCH-6 event reason
    fields[7] = "HTN^高血压复诊^XINGFU"  # SCH-7 appointment reason
    fields[8] = "FOLLOWUP^复诊^HL70277"  # SCH-8 appointment type
    fields[9], fields[10] = "30", "MIN"  # SCH-9/10 duration
    fields[11] = "^^^20261125090000+0800^20261125093000+0800"  # SCH-11 TQ start^end
    fields[16] = "9001^张^敏^^^^^^CITY_FIRST"  # SCH-16 filler contact
    fields[20] = "0012^李^卫民"  # SCH-20 entered by
    fields[25] = "Booked"  # SCH-25 filler status
    fields[26] = "ORD-1001"  # SCH-26 placer order number
    for key, value in extra.items():
        fields[int(key.removeprefix("f"))] = value
    return "|".join(fields)


RESOURCES = [
    "RGS|1|A",
    "AIS|1|A|CARD^心内科远程门诊^XINGFU|20261125090000+0800|||30|MIN",
    "AIP|1|A|specialist-city^张^敏^^^^^^CITY_FIRST|ATND^主诊医生^HL70443||||||||Booked",
    "AIL|1|A|远程会诊室^3楼^^XINGFU_THC",
]


def appointments(ctx, filler: str) -> list[Any]:  # type: ignore[no-untyped-def]
    found = ctx.records.search(SYSTEM, "Appointment", [("identifier", f"{FILLER}|{filler}")])
    for stored in found.matches:
        assert_r4(stored.json())
    return list(found.matches)


def test_booking_then_cancel_updates_the_same_appointment(demo):
    booking = message("S12", "SIU-1", sch(), "NTE|1||请携带既往心电图", PID, *RESOURCES)
    reply = demo.hl7.receive(booking, MLLP)
    assert reply.code == "AA", reply.error
    assert reply.warnings == ["SCH-6 (segment 2): field not mapped"]  # a booking's event reason
    (stored,) = appointments(demo, "RAPT-7001")
    appointment = stored.json()
    assert appointment["status"] == "booked"
    assert appointment["start"] == "2026-11-25T09:00:00+08:00"
    assert appointment["end"] == "2026-11-25T09:30:00+08:00"
    assert appointment["minutesDuration"] == 30
    assert appointment["serviceType"][0]["text"] == "心内科远程门诊"
    assert appointment["appointmentType"]["coding"][0]["code"] == "FOLLOWUP"
    assert appointment["reasonCode"][0]["text"] == "高血压复诊"
    assert appointment["description"] == "高血压复诊"
    assert appointment["comment"] == "请携带既往心电图"
    assert appointment["basedOn"][0]["identifier"] == {
        "system": "urn:yilian:order:XINGFU_THC:plac",
        "value": "ORD-1001",
    }
    patient, doctor, room, contact, enterer = appointment["participant"]
    assert patient == {"actor": {"reference": "Patient/demo-wang-xiuying"}, "status": "accepted"}
    assert doctor["actor"]["display"] == "张敏" and doctor["status"] == "accepted"
    assert doctor["type"][0]["text"] == "主诊医生"
    assert room["actor"] == {"type": "Location", "display": "远程会诊室 3楼"}
    assert contact["actor"]["display"] == "张敏" and enterer["actor"]["display"] == "李卫民"
    # the Appointment is in the resident's compartment
    mine = demo.records.search(SYSTEM, "Appointment", [("patient", "demo-wang-xiuying")])
    assert [m.res_id for m in mine.matches] == [stored.res_id]

    cancel_sch = sch("PT^患者要求取消^HL70306", f25="Cancelled")
    cancel = message("S15", "SIU-2", cancel_sch, PID, *RESOURCES)
    reply = demo.hl7.receive(cancel, MLLP)
    assert reply.code == "AA" and reply.outcome == "accepted", reply.warnings
    (again,) = appointments(demo, "RAPT-7001")
    assert again.res_id == stored.res_id and again.version == 2
    assert again.json()["status"] == "cancelled"
    assert again.json()["cancelationReason"]["text"] == "患者要求取消"
    assert again.json()["start"] == appointment["start"]
    assert again.json()["participant"] == appointment["participant"]


def test_v23_booking_in_gb18030_with_only_a_start_and_a_duration(demo):
    raw = message(
        "S12",
        "SIU-GB-1",
        sch(f11="^^^202611260830", f9="45", f10="MIN", f25=""),
        PID,
        "RGS|1",
        "AIS|1||ECG^远程心电会诊^XINGFU",
        "AIP|1||0012^李^卫民|||||||||Pending",
        charset="GB 18030-2000",
        version="2.3",
    )
    assert "远程心电会诊".encode("gb18030") in raw
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AA", reply.error
    (stored,) = appointments(demo, "RAPT-7001")
    appointment = stored.json()
    assert appointment["start"] == "2026-11-26T08:30:00+08:00"  # local time: +08:00
    assert appointment["end"] == "2026-11-26T09:15:00+08:00"  # start + SCH-9 minutes
    assert appointment["serviceType"][0]["text"] == "远程心电会诊"
    assert appointment["participant"][1]["actor"]["display"] == "李卫民"
    assert appointment["participant"][1]["status"] == "needs-action"  # AIP-12 Pending


def test_reschedule_no_show_and_deleted_resources(demo):
    assert demo.hl7.receive(message("S12", "SIU-3", sch(), PID, *RESOURCES), MLLP).code == "AA"
    moved = sch(f11="^^^20261127140000+0800^20261127143000+0800")
    without_room = [*RESOURCES[:3], "AIL|1|D|远程会诊室^3楼^^XINGFU_THC"]
    reply = demo.hl7.receive(message("S13", "SIU-4", moved, PID, *without_room), MLLP)
    assert reply.code == "AA", reply.error
    (stored,) = appointments(demo, "RAPT-7001")
    assert stored.json()["start"] == "2026-11-27T14:00:00+08:00"
    assert all(p["actor"].get("type") != "Location" for p in stored.json()["participant"])
    reply = demo.hl7.receive(message("S26", "SIU-5", moved, PID), MLLP)
    assert reply.code == "AA", reply.error
    (stored,) = appointments(demo, "RAPT-7001")
    assert stored.version == 3 and stored.json()["status"] == "noshow"


def test_booking_without_a_time_is_refused_naming_the_field(demo):
    raw = message("S12", "SIU-6", sch(f11="", f9=""), PID)
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AE"
    assert "SCH-11" in (reply.error or "")
    assert appointments(demo, "RAPT-7001") == []


def test_unsupported_siu_event_is_rejected_naming_msh_9(demo):
    reply = demo.hl7.receive(message("S99", "SIU-7", sch(), PID), MLLP)
    assert reply.code == "AR" and reply.outcome == inbound.REJECTED
    ack = (reply.ack or b"").decode()
    err = next(s for s in ack.split("\r") if s.startswith("ERR"))
    assert err.split("|")[2] == "MSH^1^9^^2" and err.split("|")[3].startswith("201^")
    assert "SIU^S99 is not supported" in (reply.error or "")
    with demo.engine.connect() as conn:
        row = inbound.get(conn, reply.archive_id)
    assert row is not None and row.outcome == inbound.REJECTED
