"""SIU -> Appointment: the consortium's remote outpatient booking (v2-to-FHIR IG: SIU_S12,
SCH[Appointment], AIS/AIG/AIL/AIP[Appointment], NTE[Appointment-Comment]).

SCH-1 (placer) and SCH-2 (filler appointment ID) are the Appointment's identifiers and find it
again, so a reschedule, change, cancel or no-show updates the same Appointment.

| event | Appointment.status |
|---|---|
| S12 new booking, S13 reschedule, S14 modification | from SCH-25 when valued, else booked |
| S15 cancellation | cancelled |
| S17 deletion | entered-in-error |
| S26 no-show | noshow |

SCH-25 filler status (table 0278, the IG's FillerStatusCodes map): Pending pending, Waitlist
waitlist, Booked booked, Started checked-in, Complete fulfilled, Cancelled cancelled, Deleted
entered-in-error, Noshow noshow. SCH-6 (event reason) -> cancelationReason for S15, S17, S26.

Start and end: SCH-11.4/11.5 (v2.3 TQ), else TQ1-7/TQ1-8, else AIS-4; an end not sent is the
start plus SCH-9 (SCH-10 units, minutes by default) or AIS-7 (AIS-8 units). Participants: the
patient (accepted); AIP-3 practitioners (AIP-4 type, AIP-12 status); AIL-3 locations and AIG-3
resources by name; SCH-12/16/20 placer contact, filler contact and enterer. A resource whose
segment action code (RGS-2, AIx-2) is D is left out. SCH-26/27 (placer/filler order number)
-> basedOn, naming the ServiceRequest of ORM/OML by its identifier.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from adapters.hl7v2.errors import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    Hl7Error,
    Location,
)
from adapters.hl7v2.mapping import datatypes as dt
from adapters.hl7v2.mapping.encounter import PARTICIPATION, encounter_entry
from adapters.hl7v2.mapping.orders import order_system
from adapters.hl7v2.mapping.patient import patient_entry
from adapters.hl7v2.mapping.translation import (
    Context,
    Entry,
    Translation,
    check_event,
    new_key,
    ref,
)
from adapters.hl7v2.message import Message, Segment

EVENT_STATUS = {
    "S12": None,
    "S13": None,
    "S14": None,
    "S15": "cancelled",
    "S17": "entered-in-error",
    "S26": "noshow",
}
FILLER_STATUS = {  # HL7 table 0278 -> appointmentstatus (the IG's FillerStatusCodes map)
    "PENDING": "pending",
    "WAITLIST": "waitlist",
    "BOOKED": "booked",
    "STARTED": "checked-in",
    "COMPLETE": "fulfilled",
    "CANCELLED": "cancelled",
    "DELETED": "entered-in-error",
    "NOSHOW": "noshow",
}
PARTICIPANT_STATUS = {  # AIP-12 (table 0278) -> participationstatus
    "BOOKED": "accepted",
    "STARTED": "accepted",
    "COMPLETE": "accepted",
    "OVERBOOK": "accepted",
    "PENDING": "needs-action",
    "WAITLIST": "tentative",
    "CANCELLED": "declined",
    "DELETED": "declined",
    "NOSHOW": "declined",
    "ACCEPTED": "accepted",
    "DECLINED": "declined",
    "TENTATIVE": "tentative",
    "NEEDS-ACTION": "needs-action",
}
MINUTES = {
    "": 1.0,
    "MIN": 1.0,
    "M": 1.0,
    "MINUTE": 1.0,
    "MINUTES": 1.0,
    "分": 1.0,
    "分钟": 1.0,
    "H": 60.0,
    "HR": 60.0,
    "HOUR": 60.0,
    "HOURS": 60.0,
    "小时": 60.0,
    "S": 1 / 60,
    "SEC": 1 / 60,
    "D": 1440.0,
    "DAY": 1440.0,
    "DAYS": 1440.0,
    "天": 1440.0,
}
ENTERER = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
# (field, type) of the SCH contact people, after the IG (placer contact, filler contact, enterer)
CONTACTS = (
    (12, {"coding": [{"system": PARTICIPATION, "code": "CALLBCK"}], "text": "placer contact"}),
    (16, {"text": "filler contact"}),
    (20, {"coding": [{"system": ENTERER, "code": "enterer"}]}),
)


def translate(message: Message, ctx: Context) -> Translation:
    event = check_event(message, EVENT_STATUS)
    translation = Translation(message)
    sch = message.first("SCH")
    if sch is None:
        raise Hl7Error(f"SIU^{event} needs an SCH segment", Location("SCH"), REQUIRED_FIELD_MISSING)
    pid = message.first("PID")
    if pid is None:
        raise Hl7Error(
            f"SIU^{event} needs a PID segment naming the patient",
            Location("PID"),
            REQUIRED_FIELD_MISSING,
        )
    patient_key = patient_entry(pid, ctx, translation)
    appointment_key = _appointment(message, event, sch, patient_key, ctx, translation)
    pv1 = message.first("PV1")
    encounter = encounter_entry(pv1, None, patient_key, ctx, only_if_new=True) if pv1 else None
    if encounter is not None:
        encounter.body["appointment"] = [ref(appointment_key)]
        translation.add(encounter)
    return translation


def _appointment(
    message: Message,
    event: str,
    sch: Segment,
    patient_key: str,
    ctx: Context,
    tr: Translation,
) -> str:
    identifiers: list[dict[str, Any]] = []
    for kind, n in (("PLAC", 1), ("FILL", 2)):
        value = sch.value(n)
        if value:
            identifiers.append(
                {
                    "type": {"coding": [{"system": dt.V2_TABLE + "0203", "code": kind}]},
                    "system": f"urn:yilian:appointment:{ctx.sender_facility}:{kind.lower()}",
                    "value": value,
                }
            )
    if not identifiers:
        raise Hl7Error(
            "SCH-1 or SCH-2 (placer or filler appointment ID) is required",
            sch.where(1),
            REQUIRED_FIELD_MISSING,
        )
    filler_status = _filler_status(sch, tr)
    status = EVENT_STATUS[event] or filler_status or "booked"
    if filler_status and filler_status != status:
        tr.warnings.append(
            f"{sch.where(25)}: filler status '{sch.value(25)}' does not agree with "
            f"SIU^{event}; status {status}"
        )
    body: dict[str, Any] = {"resourceType": "Appointment", "identifier": identifiers}
    body["status"] = status
    if status in ("cancelled", "noshow", "entered-in-error"):
        reason = dt.cwe(sch.components(6))
        if reason:
            body["cancelationReason"] = reason
    services = _resources(message, "AIS")
    service_types = [c for c in (dt.cwe(s.components(3)) for s in services) if c]
    if service_types:
        body["serviceType"] = service_types
    appointment_type = dt.cwe(sch.components(8))
    if appointment_type:
        body["appointmentType"] = appointment_type
    reason = dt.cwe(sch.components(7))
    if reason:
        body["reasonCode"] = [reason]
        if reason.get("text"):
            body["description"] = reason["text"]
    _timing(message, sch, services, body, ctx, required=event in ("S12", "S13"))
    comments = [dt.text(nte, 3) for nte in _notes(message, sch)]
    if any(comments):
        body["comment"] = "\n".join(c for c in comments if c)
    based_on = []
    for kind, n in (("PLAC", 26), ("FILL", 27)):
        for rep in sch.reps(n):
            if rep and rep[0] and rep[0][0]:
                system = order_system(ctx, kind)
                based_on.append(
                    {"type": "ServiceRequest", "identifier": {"system": system, "value": rep[0][0]}}
                )
    if based_on:
        body["basedOn"] = based_on
    body["participant"] = _participants(message, sch, patient_key, ctx)
    match = [(i["system"], i["value"]) for i in reversed(identifiers)]
    return tr.add(Entry(new_key(), "Appointment", body, match=match))


def _filler_status(sch: Segment, tr: Translation) -> str | None:
    code = sch.value(25)
    if not code:
        return None
    status = FILLER_STATUS.get(code.upper())
    if status is None:
        tr.warnings.append(f"{sch.where(25)}: filler status '{code}' is not in HL7 table 0278")
    return status


def _resources(message: Message, name: str) -> list[Segment]:
    """The AIS/AIG/AIL/AIP segments of the message, without those the sender deletes (D)."""
    deleted_groups: set[int] = set()
    group = 0
    kept = []
    for seg in message.segments:
        if seg.name == "RGS":
            group = seg.sequence
            message.mark(seg)
            if seg.value(2).upper() == "D":
                deleted_groups.add(group)
        elif seg.name == name:
            message.mark(seg)
            if group not in deleted_groups and seg.value(2).upper() != "D":
                kept.append(seg)
    return kept


def _notes(message: Message, sch: Segment) -> list[Segment]:
    """NTE segments that follow SCH (or one of its TQ1) directly: notes on the appointment."""
    notes = []
    for seg in message.segments[sch.sequence :]:
        if seg.name == "TQ1":
            continue
        if seg.name != "NTE":
            break
        message.mark(seg)
        notes.append(seg)
    return notes


def _timing(
    message: Message,
    sch: Segment,
    services: list[Segment],
    body: dict[str, Any],
    ctx: Context,
    *,
    required: bool,
) -> None:
    """``required``: a booking (S12, S13) must say when; a later event may leave the times to
    what the record has."""
    tq1 = message.first("TQ1")
    candidates = [(sch.value(11, 4), sch.where(11, 4), sch.value(11, 5), sch.where(11, 5))]
    if tq1 is not None:
        candidates.append((tq1.value(7), tq1.where(7), tq1.value(8), tq1.where(8)))
    if services:
        candidates.append((services[0].value(4), services[0].where(4), "", services[0].where(4)))
    start = end = None
    for start_text, start_at, end_text, end_at in candidates:
        start = dt.dtm(start_text, start_at, ctx.default_tz)
        end = dt.dtm(end_text, end_at, ctx.default_tz)
        if start:
            break
    minutes = _minutes(sch, 9, 10)
    service_minutes = _minutes(services[0], 7, 8) if services else None
    if minutes is None:
        minutes = service_minutes
    if minutes is not None and minutes > 0 and minutes == int(minutes):
        body["minutesDuration"] = int(minutes)
    if start and "T" not in start:
        raise Hl7Error(
            f"the appointment start '{start}' has no time of day", sch.where(11, 4), DATA_TYPE_ERROR
        )
    if start and not end and minutes:
        end = _plus_minutes(start, minutes)
    if start and end:
        body["start"], body["end"] = start, end
    elif start or end:  # FHIR: start and end together or neither (app-2)
        raise Hl7Error(
            "the appointment needs an end or a duration: SCH-11.5, TQ1-8, SCH-9 or AIS-7",
            sch.where(9),
            REQUIRED_FIELD_MISSING,
        )
    elif required:  # app-3: a booked appointment has a start and an end
        raise Hl7Error(
            "the appointment start is required: SCH-11.4, TQ1-7 or AIS-4",
            sch.where(11, 4),
            REQUIRED_FIELD_MISSING,
        )


def _minutes(seg: Segment, n: int, units_n: int) -> float | None:
    amount = seg.value(n)
    if not amount:
        return None
    units = seg.value(units_n).upper()
    try:
        number = float(amount)
    except ValueError:
        raise Hl7Error(
            f"duration '{amount}' is not a number", seg.where(n), DATA_TYPE_ERROR
        ) from None
    if units not in MINUTES:
        raise Hl7Error(
            f"duration units '{units}' are not minutes, hours, seconds or days",
            seg.where(units_n),
            DATA_TYPE_ERROR,
        )
    return number * MINUTES[units]


def _plus_minutes(start: str, minutes: float) -> str:
    moved = datetime.fromisoformat(start.replace("Z", "+00:00")) + timedelta(minutes=minutes)
    text = moved.isoformat()
    return text[:-6] + "Z" if start.endswith("Z") else text


def _participants(
    message: Message, sch: Segment, patient_key: str, ctx: Context
) -> list[dict[str, Any]]:
    people: list[dict[str, Any]] = [{"actor": ref(patient_key), "status": "accepted"}]
    for aip in _resources(message, "AIP"):
        actor = dt.xcn(aip.components(3))
        if not actor:
            continue
        actor["type"] = "Practitioner"
        person: dict[str, Any] = {"actor": actor}
        role = dt.cwe(aip.components(4))
        if role:
            person["type"] = [role]
        person["status"] = _participant_status(aip, 12)
        _period(aip, 6, 9, 10, person, ctx)
        people.append(person)
    for ail in _resources(message, "AIL"):
        comps = ail.components(3) + [""] * 9
        name = " ".join(c for c in comps[:3] if c) or comps[8] or comps[3]
        if not name:
            continue
        place: dict[str, Any] = {"actor": {"type": "Location", "display": name}}
        place["status"] = _participant_status(ail, 12)
        _period(ail, 6, 9, 10, place, ctx)
        people.append(place)
    for aig in _resources(message, "AIG"):
        resource = dt.cwe(aig.components(3))
        if not resource:
            continue
        code = resource["coding"][0]["code"] if resource.get("coding") else None
        what: dict[str, Any] = {"display": resource.get("text") or code}
        if code:
            what["identifier"] = {"value": code}
        thing: dict[str, Any] = {"actor": what}
        kind = dt.cwe(aig.components(4))
        if kind:
            thing["type"] = [kind]
        thing["status"] = _participant_status(aig, 14)
        _period(aig, 8, 11, 12, thing, ctx)
        people.append(thing)
    for n, role in CONTACTS:
        contact = dt.xcn(sch.components(n))
        if contact:
            people.append({"type": [dict(role)], "actor": contact, "status": "accepted"})
    return people


def _participant_status(seg: Segment, n: int) -> str:
    code = seg.value(n).upper()
    return PARTICIPANT_STATUS.get(code, "accepted")


def _period(
    seg: Segment, start_n: int, duration_n: int, units_n: int, into: dict[str, Any], ctx: Context
) -> None:
    start = dt.dtm(seg.value(start_n), seg.where(start_n), ctx.default_tz)
    if not start:
        return
    period = {"start": start}
    minutes = _minutes(seg, duration_n, units_n)
    if minutes and "T" in start:
        period["end"] = _plus_minutes(start, minutes)
    into["period"] = period
