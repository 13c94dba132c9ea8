"""PV1 -> Encounter (v2-to-FHIR IG 'PV1[Encounter]'), shared by ADT, ORU and order messages."""

from __future__ import annotations

from typing import Any

from adapters.hl7v2.mapping import datatypes as dt
from adapters.hl7v2.mapping.translation import Context, Entry, new_key, ref
from adapters.hl7v2.message import Segment

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CLASS = {"I": "IMP", "O": "AMB", "E": "EMER", "P": "PRENC", "R": "AMB", "B": "IMP", "N": "AMB"}


def encounter_entry(
    pv1: Segment, status: str | None, patient_key: str, ctx: Context, *, only_if_new: bool = False
) -> Entry | None:
    """``status`` None: in progress, or finished when PV1-45 (discharge) is given.
    ``only_if_new``: a result message refers to the visit but does not rewrite it."""
    visit = dt.cx(pv1.components(19), ctx.sender_facility)
    if only_if_new and not visit:
        return None  # nothing to tie a result to
    kind = pv1.value(2).upper()
    body: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": status or "in-progress",
        "class": {"system": ACT, "code": CLASS.get(kind, "AMB")},
        "subject": ref(patient_key),
    }
    match: list[tuple[str, str]] = []
    if visit:
        system = f"urn:yilian:visit:{ctx.sender_facility}"
        body["identifier"] = [{"system": system, "value": visit["value"]}]
        match.append((system, visit["value"]))
    start = dt.dtm(pv1.value(44), pv1.where(44), ctx.default_tz)
    end = dt.dtm(pv1.value(45), pv1.where(45), ctx.default_tz)
    if start or end:
        body["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    if end and status is None:
        body["status"] = "finished"
    location = [c for c in pv1.components(3)[:3] if c]
    if location:
        body["location"] = [{"location": {"display": " ".join(location)}}]
    attending = dt.xcn(pv1.components(7))
    if attending:
        body["participant"] = [
            {
                "type": [{"coding": [{"system": PARTICIPATION, "code": "ATND"}]}],
                "individual": attending,
            }
        ]
    disposition = dt.cwe(pv1.components(36))
    if disposition:
        body["hospitalization"] = {"dischargeDisposition": disposition}
    if ctx.organization:
        body["serviceProvider"] = {"reference": f"Organization/{ctx.organization}"}
    return Entry(new_key(), "Encounter", body, match=match, create_only_if_new=only_if_new)
