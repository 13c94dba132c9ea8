"""ORM^O01 and OML^O21 (O33, O35) -> one ServiceRequest per order (v2-to-FHIR IG: ORM_O01,
OML_O21, ORC[ServiceRequest], OBR[ServiceRequest], TQ1[ServiceRequest], NTE[ServiceRequest]).

An order is an ORC with the TQ1, OBR, NTE and DG1 segments that follow it (a second OBR under
the same ORC is an order of its own sharing that ORC). Its placer (ORC-2/OBR-2) and filler
(ORC-3/OBR-3) numbers are the ServiceRequest's identifiers and find it again, so a change,
hold or cancel updates the same ServiceRequest.

ServiceRequest.status from ORC-1 (HL7 table 0119) and ORC-5 (table 0038):

| ORC-1 | status |
|---|---|
| CA OC CR DC OD DR (cancel / discontinue) | revoked, whatever ORC-5 says |
| HD OH HR (hold) | on-hold, whatever ORC-5 says |
| NW OK SN NA RL OR OE XO XR XX SC RO RP RQ RU RE PR CH PA | ORC-5 when valued, else active |

| ORC-5 | status |
|---|---|
| IP SC A | active |
| CM | completed |
| CA DC RP | revoked |
| HD | on-hold |
| ER | entered-in-error |

The IG maps the *requests* CA, DC and HD to "active" (the filler has not yet acted on them).
Here the township HIS is the placer and the record follows what it says, so a placer's cancel
revokes the order and a hold holds it at once. Any other ORC-1 is refused (AE, naming ORC-1).
Intent: "order" ("reflex-order" when OBR-11 is G). Priority (TQ1-9, ORC-7.6, OBR-27.6, OBR-5):
S stat, A asap, R routine (the FHIR codes themselves are accepted too).

Beyond the IG: OBR-24 (diagnostic service section) -> category, as ORU does for the report; DG1-3
(diagnosis, 临床诊断) -> reasonCode, because Condition is not a resource the record keeps.
ServiceRequest.performer is left empty on purpose: a performer Organization puts the resident's
record within that hospital's reach, which is teleconsult routing's decision, not the message's.
"""

from __future__ import annotations

from typing import Any

from adapters.hl7v2.errors import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    Hl7Error,
    Location,
)
from adapters.hl7v2.mapping import datatypes as dt
from adapters.hl7v2.mapping.encounter import encounter_entry
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

EVENTS = {"ORM": ("O01",), "OML": ("O21", "O33", "O35")}
ACTIVE_CONTROLS = (
    *("NW", "OK", "SN", "NA", "RL", "OR", "OE", "XO", "XR", "XX"),
    *("SC", "RO", "RP", "RQ", "RU", "RE", "PR", "CH", "PA"),
)
CONTROL_STATUS = {
    **{code: "active" for code in ACTIVE_CONTROLS},
    **{code: "revoked" for code in ("CA", "OC", "CR", "DC", "OD", "DR")},
    **{code: "on-hold" for code in ("HD", "OH", "HR")},
}
DECISIVE = {code for code, status in CONTROL_STATUS.items() if status != "active"}
ORDER_STATUS = {
    "IP": "active",
    "SC": "active",
    "A": "active",
    "CM": "completed",
    "CA": "revoked",
    "DC": "revoked",
    "RP": "revoked",
    "HD": "on-hold",
    "ER": "entered-in-error",
}
PRIORITY = {
    "S": "stat",
    "A": "asap",
    "R": "routine",
    "STAT": "stat",
    "ASAP": "asap",
    "URGENT": "urgent",
    "ROUTINE": "routine",
}
STATUS_REASON = "http://hl7.org/fhir/StructureDefinition/request-statusReason"
# segments of an order group that this mapping reads; others stay unmapped (and are named)
MAPPED = {"TQ1", "OBR", "NTE", "DG1"}


def translate(message: Message, ctx: Context) -> Translation:
    kind = message.msh.value(9, 1).upper()
    event = check_event(message, EVENTS.get(kind, ()))
    translation = Translation(message)
    pid = message.first("PID")
    if pid is None:
        raise Hl7Error(
            f"{kind}^{event} needs a PID segment", Location("PID"), REQUIRED_FIELD_MISSING
        )
    patient_key = patient_entry(pid, ctx, translation)
    pv1 = message.first("PV1")
    encounter = encounter_entry(pv1, None, patient_key, ctx, only_if_new=True) if pv1 else None
    encounter_key = translation.add(encounter) if encounter else None
    orders = order_groups(message)
    if not orders:
        raise Hl7Error(
            f"{kind}^{event} needs at least one ORC segment",
            Location("ORC"),
            REQUIRED_FIELD_MISSING,
        )
    for orc, members in orders:
        service_request(orc, members, patient_key, encounter_key, ctx, translation)
    first_event = orders[0][0]
    translation.occurred = dt.dtm(first_event.value(9), first_event.where(9), ctx.default_tz)
    return translation


def order_groups(message: Message) -> list[tuple[Segment, list[Segment]]]:
    """Each ORC with the segments of its order this mapping reads; one entry per OBR."""
    groups: list[tuple[Segment, list[Segment]]] = []
    current: list[Segment] | None = None
    orc: Segment | None = None
    last = ""
    for seg in message.segments:
        if seg.name == "ORC":
            orc, current, last = seg, [], "ORC"
            message.mark(seg)
            groups.append((orc, current))
            continue
        if orc is None or current is None:
            continue
        if seg.name == "PID":  # the next patient (a batch of orders): the group ended
            orc = current = None
            continue
        if seg.name == "OBR" and any(s.name == "OBR" for s in current):
            current = []
            groups.append((orc, current))
        # an NTE belongs to the order when it follows ORC, TQ1 or OBR (not an OBX)
        if seg.name in MAPPED and (seg.name != "NTE" or last in ("ORC", "TQ1", "OBR", "DG1")):
            current.append(seg)
            message.mark(seg)
        if seg.name != "NTE":
            last = seg.name
    return groups


def order_system(ctx: Context, kind: str) -> str:
    """The identifier system of a clinic's placer (PLAC) or filler (FILL) order numbers, the
    one ORU results use: urn:yilian:order:<MSH-4>:plac or :fill."""
    return f"urn:yilian:order:{ctx.sender_facility}:{kind.lower()}"


def order_identifiers(
    orc: Segment | None, obr: Segment | None, ctx: Context, tr: Translation
) -> list[dict[str, Any]]:
    """Placer (PLAC) and filler (FILL) order numbers, OBR-2/3 first (the IG's precedence),
    in the systems ORU results use for the same numbers."""
    ids = []
    for kind, n in (("PLAC", 2), ("FILL", 3)):
        from_obr = obr.value(n) if obr else ""
        from_orc = orc.value(n) if orc else ""
        if from_obr and from_orc and from_obr != from_orc and orc is not None:
            tr.warnings.append(
                f"{orc.where(n)}: '{from_orc}' differs from OBR-{n} '{from_obr}'; OBR-{n} used"
            )
        value = from_obr or from_orc
        if value:
            ids.append(
                {
                    "type": {"coding": [{"system": dt.V2_TABLE + "0203", "code": kind}]},
                    "system": order_system(ctx, kind),
                    "value": value,
                }
            )
    return ids


def service_request(
    orc: Segment,
    members: list[Segment],
    patient_key: str,
    encounter_key: str | None,
    ctx: Context,
    tr: Translation,
    *,
    only_if_new: bool = False,
) -> str:
    """The ServiceRequest of one order group; ``only_if_new``: a message that only refers to
    the order (MDM) creates it when missing but does not rewrite it."""
    obr = next((s for s in members if s.name == "OBR"), None)
    tq1 = next((s for s in members if s.name == "TQ1"), None)
    control = orc.value(1).upper()
    identifiers = order_identifiers(orc, obr, ctx, tr)
    if not identifiers:
        raise Hl7Error(
            "ORC-2 or ORC-3 (placer or filler order number) is required to follow the order",
            orc.where(2),
            REQUIRED_FIELD_MISSING,
        )
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": identifiers,
        "status": _status(orc, control, tr),
        "intent": "reflex-order" if obr and obr.value(11).upper() == "G" else "order",
        "subject": ref(patient_key),
    }
    group = orc.value(4)
    if group:
        body["requisition"] = {
            "type": {"coding": [{"system": dt.V2_TABLE + "0203", "code": "PGN"}]},
            "system": f"urn:yilian:order:{ctx.sender_facility}:group",
            "value": group,
        }
    if obr is not None:
        _from_obr(obr, body)
    elif control == "NW":
        raise Hl7Error(
            "a new order needs an OBR segment with OBR-4 (universal service identifier); "
            "pharmacy and diet orders are not mapped",
            orc.where(1),
            REQUIRED_FIELD_MISSING,
        )
    priority = _priority(orc, obr, tq1, tr)
    if priority:
        body["priority"] = priority
    _occurrence(orc, obr, tq1, body, ctx)
    # ORC-9 is when this message's event happened (Provenance); it is the order's on NW only
    when = dt.dtm(orc.value(9), orc.where(9), ctx.default_tz)
    if when and control == "NW":
        body["authoredOn"] = when
    if encounter_key:
        body["encounter"] = ref(encounter_key)
    ordering = dt.xcn(orc.components(12))
    requester = ordering or (dt.xcn(obr.components(16)) if obr else None)  # OBR-16: the same
    if requester:
        body["requester"] = requester
    reasons = dt.every(obr, 31, dt.cwe) if obr else []
    for dg1 in (s for s in members if s.name == "DG1"):
        diagnosis = dt.cwe(dg1.components(3)) or (
            {"text": dt.text(dg1, 4)} if dg1.value(4) else None
        )
        if diagnosis:
            reasons.append(diagnosis)
    if reasons:
        body["reasonCode"] = reasons
    quantity = _quantity(tq1) if tq1 is not None else None
    if quantity:
        body["quantityQuantity"] = quantity
    notes = [dt.text(s, 3) for s in members if s.name == "NTE"]
    if tq1 is not None and tq1.value(11):
        notes.append(dt.text(tq1, 11))
    if any(notes):
        body["note"] = [{"text": n} for n in notes if n]
    reason = dt.cwe(orc.components(16))
    if reason:
        body["extension"] = [{"url": STATUS_REASON, "valueCodeableConcept": reason}]
    match = [(i["system"], i["value"]) for i in reversed(identifiers)]
    entry = Entry(new_key(), "ServiceRequest", body, match=match, create_only_if_new=only_if_new)
    return tr.add(entry)


def _status(orc: Segment, control: str, tr: Translation) -> str:
    if not control:
        raise Hl7Error("ORC-1 (order control) is required", orc.where(1), REQUIRED_FIELD_MISSING)
    if control not in CONTROL_STATUS:
        raise Hl7Error(
            f"order control '{control}' is not supported; supported: "
            + " ".join(sorted(CONTROL_STATUS)),
            orc.where(1),
            TABLE_VALUE_NOT_FOUND,
        )
    order_status = orc.value(5).upper()
    if control in DECISIVE or not order_status:
        return CONTROL_STATUS[control]
    if order_status not in ORDER_STATUS:
        tr.warnings.append(
            f"{orc.where(5)}: order status '{order_status}' is not in HL7 table 0038; "
            f"status taken from ORC-1 '{control}'"
        )
        return CONTROL_STATUS[control]
    return ORDER_STATUS[order_status]


def _quantity(tq1: Segment) -> dict[str, Any] | None:
    """TQ1-2 (CQ: quantity^units) -> quantityQuantity."""
    amount, units = (tq1.components(2) + ["", ""])[:2]
    if not amount:
        return None
    try:
        value = float(amount)
    except ValueError:
        raise Hl7Error(
            f"TQ1-2 quantity '{amount}' is not a number", tq1.where(2, 1), DATA_TYPE_ERROR
        ) from None
    quantity: dict[str, Any] = {"value": int(value) if value == int(value) else value}
    if units:
        quantity["unit"] = units
    return quantity


def _from_obr(obr: Segment, body: dict[str, Any]) -> None:
    code = dt.cwe(obr.components(4))
    if not code:
        raise Hl7Error(
            "OBR-4 (universal service identifier) is required", obr.where(4), REQUIRED_FIELD_MISSING
        )
    body["code"] = code
    section = obr.value(24).upper()
    if section:
        body["category"] = [{"coding": [{"system": dt.V2_TABLE + "0074", "code": section}]}]


def _priority(
    orc: Segment, obr: Segment | None, tq1: Segment | None, tr: Translation
) -> str | None:
    candidates = [
        (tq1.value(9), tq1.where(9)) if tq1 else ("", None),
        (orc.value(7, 6), orc.where(7, 6)),
        (obr.value(27, 6), obr.where(27, 6)) if obr else ("", None),
        (obr.value(5), obr.where(5)) if obr else ("", None),
    ]
    for code, where in candidates:
        if not code:
            continue
        if code.upper() in PRIORITY:
            return PRIORITY[code.upper()]
        tr.warnings.append(f"{where}: priority '{code}' is not S, A or R; not mapped")
        return None
    return None


def _occurrence(
    orc: Segment, obr: Segment | None, tq1: Segment | None, body: dict[str, Any], ctx: Context
) -> None:
    """TQ1-7/8, else the TQ of ORC-7 or OBR-27 (components 4 and 5), else OBR-6."""
    spans: list[tuple[str, str, Location, Location]] = []
    if tq1 is not None:
        spans.append((tq1.value(7), tq1.value(8), tq1.where(7), tq1.where(8)))
    spans.append((orc.value(7, 4), orc.value(7, 5), orc.where(7, 4), orc.where(7, 5)))
    if obr is not None:
        spans.append((obr.value(27, 4), obr.value(27, 5), obr.where(27, 4), obr.where(27, 5)))
        spans.append((obr.value(6), "", obr.where(6), obr.where(6)))
    for start_text, end_text, start_at, end_at in spans:
        start = dt.dtm(start_text, start_at, ctx.default_tz)
        end = dt.dtm(end_text, end_at, ctx.default_tz)
        if start and end:
            body["occurrencePeriod"] = {"start": start, "end": end}
            return
        if start or end:
            body["occurrenceDateTime" if start else "occurrencePeriod"] = start or {"end": end}
            return
