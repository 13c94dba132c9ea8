"""ADT -> Patient and Encounter (v2-to-FHIR IG: ADT_A01 and friends, PV1[Encounter]);
A40 -> patient merge."""

from __future__ import annotations

from typing import Any

from adapters.hl7v2.errors import REQUIRED_FIELD_MISSING, Hl7Error, Location
from adapters.hl7v2.mapping import datatypes as dt
from adapters.hl7v2.mapping.encounter import encounter_entry
from adapters.hl7v2.mapping.patient import patient_entry
from adapters.hl7v2.mapping.translation import (
    Context,
    Merge,
    Translation,
    check_event,
)
from adapters.hl7v2.message import Message

# the Encounter status each trigger event leaves behind (None: keep what PV1 says)
STATUS = {
    "A01": "in-progress",
    "A02": "in-progress",
    "A03": "finished",
    "A04": "arrived",
    "A05": "planned",
    "A08": None,
    "A11": "cancelled",
    "A13": "in-progress",
}
PERSON_ONLY = {"A28", "A31"}
EVENTS = set(STATUS) | PERSON_ONLY | {"A40"}


def translate(message: Message, ctx: Context) -> Translation:
    event = check_event(message, EVENTS)
    translation = Translation(message)
    evn = message.first("EVN")
    if evn is not None:
        when = 6 if evn.value(6) else 2  # EVN-6 event occurred, else EVN-2 recorded
        translation.occurred = dt.dtm(evn.value(when), evn.where(when), ctx.default_tz)
        if evn.value(1) and evn.value(1) != event:  # EVN-1: the event again, before v2.5
            translation.warnings.append(
                f"{evn.where(1)}: '{evn.value(1)}' is not MSH-9.2 '{event}'"
            )
    pid = message.first("PID")
    if pid is None:
        raise Hl7Error("ADT messages need a PID segment", Location("PID"), REQUIRED_FIELD_MISSING)
    patient_key = patient_entry(pid, ctx, translation)
    _contacts(message, translation)
    if event == "A40":
        _merge(message, translation, patient_key, ctx)
        return translation
    if event in PERSON_ONLY:
        return translation
    pv1 = message.first("PV1")
    if pv1 is None:
        raise Hl7Error(f"ADT^{event} needs a PV1 segment", Location("PV1"), REQUIRED_FIELD_MISSING)
    encounter = encounter_entry(pv1, STATUS[event], patient_key, ctx)
    assert encounter is not None
    translation.add(encounter)
    return translation


def _contacts(message: Message, translation: Translation) -> None:
    contacts = []
    for nk1 in message.all("NK1"):
        contact: dict[str, Any] = {}
        name = dt.first(dt.every(nk1, 2, dt.xpn))
        if name:
            contact["name"] = name
        relationship = dt.cwe(nk1.components(3))
        if relationship:
            contact["relationship"] = [relationship]
        address = dt.first(dt.every(nk1, 4, dt.xad))
        if address:
            contact["address"] = address
        phones = dt.every(nk1, 5, dt.xtn)
        if phones:
            contact["telecom"] = phones
        if contact:
            contacts.append(contact)
    if contacts and translation.patient_key:
        patient = next(e for e in translation.entries if e.key == translation.patient_key)
        patient.body["contact"] = contacts


def _merge(message: Message, translation: Translation, target_key: str, ctx: Context) -> None:
    mrg = message.first("MRG")
    if mrg is None:
        raise Hl7Error(
            "ADT^A40 needs an MRG segment naming the patient merged away",
            Location("MRG"),
            REQUIRED_FIELD_MISSING,
        )
    sources = dt.every(mrg, 1, lambda c: dt.cx(c, ctx.sender_facility))
    if not sources:
        raise Hl7Error(
            "MRG-1 (prior patient identifier list) is required",
            mrg.where(1),
            REQUIRED_FIELD_MISSING,
        )
    translation.merges.append(Merge([(i["system"], i["value"]) for i in sources], target_key))
