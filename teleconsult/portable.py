"""Resources in the form they travel between member gateways (see ``teleconsult.messages``).

A portable resource has no id and no meta; what both ends know it goes by identifier (the
patient's identifiers, the request key, Study Instance UIDs) or by the member's Organization,
whose id follows from its code at every gateway. The receiving gateway adds its own references
beside the identifiers; ``signed_form`` takes them away again, so a report's signature can be
checked on the copy either gateway keeps.
"""

from __future__ import annotations

import copy
from typing import Any

from records.identity import RESIDENT_ID_SYSTEM
from teleconsult.messages import REQUEST_KEY_SYSTEM

_PATIENT_KEEP = ("identifier", "name", "gender", "birthDate", "managingOrganization")
_DROP = ("id", "meta", "text")


def patient(body: dict[str, Any]) -> dict[str, Any]:
    """What the reading hospital needs to know who the resident is: identifiers, name, sex,
    birth date and the managing clinic (not the address or phone)."""
    out = {"resourceType": "Patient"}
    out.update({k: copy.deepcopy(body[k]) for k in _PATIENT_KEEP if k in body})
    return out


def patient_reference(body: dict[str, Any]) -> dict[str, Any]:
    """A reference by the patient's strongest identifier (the resident identity number first)."""
    identifiers = sorted(
        (i for i in body.get("identifier", []) if i.get("system") and i.get("value")),
        key=lambda i: i["system"] != RESIDENT_ID_SYSTEM,
    )
    ref: dict[str, Any] = {}
    if identifiers:
        ref["identifier"] = {"system": identifiers[0]["system"], "value": identifiers[0]["value"]}
    names = body.get("name") or []
    if names and names[0].get("text"):
        ref["display"] = names[0]["text"]
    return ref


def key_reference(key: str, rtype: str) -> dict[str, Any]:
    return {"type": rtype, "identifier": {"system": REQUEST_KEY_SYSTEM, "value": key}}


def strip(body: dict[str, Any]) -> dict[str, Any]:
    """A copy without id, meta and text."""
    return {k: copy.deepcopy(v) for k, v in body.items() if k not in _DROP}


_DOCUMENT_FIELDS = ("status", "docStatus", "type", "category", "date", "description")
_ATTACHMENT_FIELDS = ("contentType", "language", "data", "size", "hash", "title", "creation")


def document(body: dict[str, Any]) -> dict[str, Any]:
    """What of a DocumentReference travels: its description and the content held inline (an
    attachment that only points at this gateway is of no use elsewhere)."""
    out: dict[str, Any] = {"resourceType": "DocumentReference"}
    out |= {k: copy.deepcopy(body[k]) for k in _DOCUMENT_FIELDS if k in body}
    out["content"] = [
        {"attachment": {k: v for k, v in item["attachment"].items() if k in _ATTACHMENT_FIELDS}}
        for item in body.get("content", [])
        if isinstance(item, dict) and (item.get("attachment") or {}).get("data")
    ]
    return out


def by_identifier(ref: dict[str, Any]) -> dict[str, Any] | None:
    """A reference kept only by its identifier (local ones dropped), or None without one."""
    if not ref.get("identifier"):
        return None
    return {k: v for k, v in ref.items() if k != "reference"}


def signed_form(body: dict[str, Any]) -> dict[str, Any]:
    """The form a report is signed in: no id/meta/text, and every reference that names an
    identifier without the local ``reference`` a receiving gateway added beside it."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            keep_local = not node.get("identifier") or not isinstance(node.get("reference"), str)
            return {k: walk(v) for k, v in node.items() if keep_local or k != "reference"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(strip(body))  # type: ignore[no-any-return]
