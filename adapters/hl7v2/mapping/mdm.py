"""MDM -> DocumentReference (v2-to-FHIR IG: MDM_T02, TXA[DocumentReference],
OBX[DocumentReference]); the order it answers (ORC/OBR) -> ServiceRequest, created only when
the record does not have it yet, and named in context.related.

TXA-12 (unique document number) is the document's identifier and finds it again, so a status
change (T03/T04), an edit (T07/T08) or a cancel (T11) updates the same DocumentReference.

Content: each OBX of type ED -> an attachment with its Base64 data (as ORU does), RP -> an
attachment with the url; the TX/FT/ST lines, in order, -> one "text/plain; charset=utf-8"
attachment (Base64 of the UTF-8 text). Events without content (T01, T05) get an attachment that
only carries the title, since DocumentReference.content is required; T03, T07 and T11 carry no
content and keep what the record has.

| TXA-17 completion (table 0271) | docStatus |
|---|---|
| DO documented, AU authenticated, LA legally authenticated | final |
| DI dictated, IP in progress, IN incomplete, PA pre-authenticated | preliminary |
| empty | from OBX-11 when all agree: F final, P preliminary, C amended, D W entered-in-error |

| TXA-19 availability (table 0273) | status |
|---|---|
| AV, UN or empty | current |
| OB obsolete | superseded |
| CA canceled (and any MDM^T11) | entered-in-error |

TXA-18 (table 0272) -> securityLabel in the v2-0272 system, as the IG does.
"""

from __future__ import annotations

from typing import Any

from adapters.hl7v2.errors import (
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    Hl7Error,
    Location,
)
from adapters.hl7v2.mapping import attachment
from adapters.hl7v2.mapping import datatypes as dt
from adapters.hl7v2.mapping.encounter import encounter_entry
from adapters.hl7v2.mapping.orders import order_groups, order_system, service_request
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

WITH_CONTENT = {"T02", "T04", "T06", "T08"}
TITLE_ONLY = {"T01", "T05"}  # a new document announced without its content
EVENTS = WITH_CONTENT | TITLE_ONLY | {"T03", "T07", "T11"}
ADDENDA = {"T05", "T06"}  # TXA-13 names the document they append to
COMPLETION = {
    "DO": "final",
    "AU": "final",
    "LA": "final",
    "DI": "preliminary",
    "IP": "preliminary",
    "IN": "preliminary",
    "PA": "preliminary",
}
RESULT_STATUS = {
    "F": "final",
    "P": "preliminary",
    "C": "amended",
    "D": "entered-in-error",
    "W": "entered-in-error",
}
AVAILABILITY = {"": "current", "AV": "current", "OB": "superseded", "CA": "entered-in-error"}
TEXT_TYPES = {"TX", "FT", "ST"}
# TXA-3 content presentation (table 0191) of a document announced without content
PRESENTATION = {"TX": "text/plain", "TEXT": "text/plain", "FT": "text/plain"}


def translate(message: Message, ctx: Context) -> Translation:
    event = check_event(message, EVENTS)
    translation = Translation(message)
    evn = message.first("EVN")
    if evn is not None:
        translation.occurred = dt.dtm(evn.value(6) or evn.value(2), evn.where(2), ctx.default_tz)
        if evn.value(1) and evn.value(1) != event:  # EVN-1: the event again, before v2.5
            translation.warnings.append(
                f"{evn.where(1)}: '{evn.value(1)}' is not MSH-9.2 '{event}'"
            )
    pid = message.first("PID")
    if pid is None:
        raise Hl7Error(f"MDM^{event} needs a PID segment", Location("PID"), REQUIRED_FIELD_MISSING)
    txa = message.first("TXA")
    if txa is None:
        raise Hl7Error(f"MDM^{event} needs a TXA segment", Location("TXA"), REQUIRED_FIELD_MISSING)
    patient_key = patient_entry(pid, ctx, translation)
    pv1 = message.first("PV1")
    encounter = encounter_entry(pv1, None, patient_key, ctx, only_if_new=True) if pv1 else None
    encounter_key = translation.add(encounter) if encounter else None
    related = [
        ref(
            service_request(
                orc, members, patient_key, encounter_key, ctx, translation, only_if_new=True
            )
        )
        for orc, members in order_groups(message)
    ]
    _document(message, event, txa, patient_key, encounter_key, related, ctx, translation)
    return translation


def _document(
    message: Message,
    event: str,
    txa: Segment,
    patient_key: str,
    encounter_key: str | None,
    related: list[dict[str, Any]],
    ctx: Context,
    tr: Translation,
) -> None:
    number = txa.value(12)
    if not number:
        raise Hl7Error(
            "TXA-12 (unique document number) is required", txa.where(12), REQUIRED_FIELD_MISSING
        )
    system = f"urn:yilian:document:{ctx.sender_facility}"
    obxs = message.all("OBX")
    body: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": system, "value": number},
        "identifier": [{"system": system, "value": number}],
        "status": "entered-in-error" if event == "T11" else _availability(txa),
        "subject": ref(patient_key),
    }
    doc_status = _doc_status(txa, obxs, tr)
    if doc_status:
        body["docStatus"] = doc_status
    doc_type = dt.cwe(txa.components(2))
    if doc_type:
        body["type"] = doc_type
    when = _instant(txa, 6, ctx) or _instant(txa, 4, ctx)
    if when:
        body["date"] = when
    authors = dt.every(txa, 9, dt.xcn)
    if authors:
        body["author"] = authors
    authenticators = dt.every(txa, 10, dt.xcn)
    if authenticators:
        body["authenticator"] = authenticators[0]
    if ctx.organization:
        body["custodian"] = {"reference": f"Organization/{ctx.organization}"}
    title = dt.text(txa, 25)
    if title:
        body["description"] = title
    confidentiality = txa.value(18).upper()
    if confidentiality:
        body["securityLabel"] = [
            {"coding": [{"system": dt.V2_TABLE + "0272", "code": confidentiality}]}
        ]
    parent = txa.value(13) if event in ADDENDA else ""
    if parent:
        target = {"type": "DocumentReference", "identifier": {"system": system, "value": parent}}
        body["relatesTo"] = [{"code": "appends", "target": target}]
    content = _content(event, txa, obxs, title, tr)
    if content:
        body["content"] = content
    context = _context(txa, encounter_key, related, ctx)
    if context:
        body["context"] = context
    tr.add(Entry(new_key(), "DocumentReference", body, match=[(system, number)]))


def _availability(txa: Segment) -> str:
    code = txa.value(19).upper()
    if code not in AVAILABILITY and code != "UN":
        raise Hl7Error(
            f"document availability '{code}' is not in HL7 table 0273 (AV CA OB UN)",
            txa.where(19),
            TABLE_VALUE_NOT_FOUND,
        )
    return AVAILABILITY.get(code, "current")  # UN (unavailable): still the current document


def _doc_status(txa: Segment, obxs: list[Segment], tr: Translation) -> str | None:
    from_obx = {RESULT_STATUS.get(o.value(11).upper()) for o in obxs} - {None}
    code = txa.value(17).upper()
    if not code:
        return from_obx.pop() if len(from_obx) == 1 else None
    if code not in COMPLETION:
        tr.warnings.append(
            f"{txa.where(17)}: completion status '{code}' is not in HL7 table 0271; "
            "docStatus left empty"
        )
    return COMPLETION.get(code)


def _instant(txa: Segment, n: int, ctx: Context) -> str | None:
    """DocumentReference.date is an instant: only a date/time with a time of day fits."""
    value = dt.dtm(txa.value(n), txa.where(n), ctx.default_tz)
    return value if value and "T" in value else None


def _content(
    event: str, txa: Segment, obxs: list[Segment], title: str, tr: Translation
) -> list[dict[str, Any]]:
    if event in WITH_CONTENT and not obxs:
        raise Hl7Error(
            f"MDM^{event} needs OBX segments with the document content",
            Location("OBX"),
            REQUIRED_FIELD_MISSING,
        )
    presentation = txa.value(3).upper()  # what OBX-2 says again, when there is content
    content: list[dict[str, Any]] = []
    lines: list[str] = []
    text_title = title
    for obx in obxs:
        value_type = obx.value(2).upper()
        if value_type == "ED":
            found = attachment.ed(obx)
        elif value_type == "RP":
            found = attachment.rp(obx)
        else:
            if value_type not in TEXT_TYPES:
                tr.warnings.append(
                    f"{obx.where(2)}: value type {value_type or '(empty)'} in a document; "
                    "kept as a line of its text"
                )
            label = dt.cwe(obx.components(3))
            if not text_title and label and label.get("text"):
                text_title = label["text"]
            lines.append(dt.text(obx, 5))
            continue
        if found:
            content.append({"attachment": found})
    if lines:
        content.insert(0, {"attachment": attachment.text("\n".join(lines), text_title or None)})
    if not content and event in TITLE_ONLY:
        stub: dict[str, Any] = {"title": title or _type_text(txa) or "document"}
        if presentation in PRESENTATION:
            stub["contentType"] = PRESENTATION[presentation]
        content.append({"attachment": stub})
    return content


def _type_text(txa: Segment) -> str:
    concept = dt.cwe(txa.components(2)) or {}
    return str(concept.get("text") or "")


def _context(
    txa: Segment, encounter_key: str | None, related: list[dict[str, Any]], ctx: Context
) -> dict[str, Any]:
    context: dict[str, Any] = {}
    if encounter_key:
        context["encounter"] = [ref(encounter_key)]
    activity = dt.dtm(txa.value(4), txa.where(4), ctx.default_tz)
    if activity:
        context["period"] = {"start": activity}
    # TXA-14/15: the order the document answers, when no ORC/OBR names it
    orders = []
    for kind, n in (("PLAC", 14), ("FILL", 15)):
        value = txa.value(n)
        if value:
            system = order_system(ctx, kind)
            orders.append(
                {"type": "ServiceRequest", "identifier": {"system": system, "value": value}}
            )
    related = related or orders
    if related:
        context["related"] = related
    return context
