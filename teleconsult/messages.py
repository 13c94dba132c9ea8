"""FHIR messages between member gateways (``Bundle.type = message``, FHIR R4 messaging).

The first entry is a MessageHeader whose ``eventCoding`` (system ``urn:yilian:teleconsult-event``)
says what the message carries:

| event | focus | sent by |
|---|---|---|
| ``request`` | Task, ServiceRequest, Patient | the requesting gateway, once the request is made |
| ``status`` | Task (status, reason, note) | either side, when its Task moves |
| ``report`` | Task, DiagnosticReport, Provenance (signed) | the reading hospital |
| ``cancel`` | Task | the requesting gateway |

Resources travel in a *portable* form: no ids, references to things both ends know by
identifier (the request's key ``urn:yilian:teleconsult|<uuid>``, Study Instance UIDs, member
codes as ``Organization/<id>``), so each gateway files them under its own ids. ``Bundle.id`` is
the outbox row's id: the receiver keeps it with its answer and a retried delivery is answered
again without being processed twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from records.errors import Invalid

EVENT_SYSTEM = "urn:yilian:teleconsult-event"
EVENTS = ("request", "status", "report", "cancel")
REQUEST_KEY_SYSTEM = "urn:yilian:teleconsult"
MEMBER_SYSTEM = "urn:yilian:org"


def message(
    message_id: str,
    event: str,
    source: str,
    destination: str,
    resources: list[dict[str, Any]],
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """A message Bundle from member ``source`` to member ``destination`` (codes)."""
    entries = [
        {"fullUrl": f"urn:uuid:{message_id}-{n}", "resource": body}
        for n, body in enumerate(resources, start=1)
    ]
    header = {
        "resourceType": "MessageHeader",
        "eventCoding": {"system": EVENT_SYSTEM, "code": event},
        "source": {"name": source, "endpoint": f"{MEMBER_SYSTEM}:{source}"},
        "destination": [{"name": destination, "endpoint": f"{MEMBER_SYSTEM}:{destination}"}],
        "focus": [{"reference": e["fullUrl"]} for e in entries],
    }
    return {
        "resourceType": "Bundle",
        "id": message_id,
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{message_id}"},
        "type": "message",
        "timestamp": (timestamp or datetime.now(UTC)).isoformat(timespec="seconds"),
        "entry": [{"fullUrl": f"urn:uuid:{message_id}-0", "resource": header}, *entries],
    }


@dataclass
class Message:
    id: str
    event: str
    source: str  # member code of the sender, as the header names it
    destination: str
    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def one(self, rtype: str) -> dict[str, Any]:
        found = self.resources.get(rtype, [])
        if len(found) != 1:
            raise Invalid(
                f"a '{self.event}' message carries one {rtype}, this one {len(found)}",
                expression=["Bundle.entry"],
            )
        return found[0]


def parse(bundle: Any) -> Message:
    """Check the shape of a message Bundle; refuse with an OperationOutcome naming the part."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise Invalid("$process-message takes a Bundle", expression=["Bundle"])
    if bundle.get("type") != "message":
        raise Invalid("the Bundle's type must be 'message'", expression=["Bundle.type"])
    message_id = bundle.get("id")
    if not isinstance(message_id, str) or not message_id:
        raise Invalid("a message Bundle needs its id (the message id)", expression=["Bundle.id"])
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("resource"), dict) for e in entries
    ):
        raise Invalid("every entry of a message holds a resource", expression=["Bundle.entry"])
    header = entries[0]["resource"] if entries else {}
    if header.get("resourceType") != "MessageHeader":
        raise Invalid("the first entry must be a MessageHeader", expression=["Bundle.entry[0]"])
    coding = header.get("eventCoding") or {}
    if coding.get("system") != EVENT_SYSTEM or coding.get("code") not in EVENTS:
        raise Invalid(
            f"unknown event {coding.get('system')}|{coding.get('code')}; this gateway "
            f"processes {EVENT_SYSTEM} {', '.join(EVENTS)}",
            expression=["MessageHeader.eventCoding"],
        )
    found = Message(
        id=message_id,
        event=coding["code"],
        source=str((header.get("source") or {}).get("name", "")),
        destination=str(((header.get("destination") or [{}])[0]).get("name", "")),
    )
    for entry in entries[1:]:
        body = entry["resource"]
        rtype = body.get("resourceType")
        if not isinstance(rtype, str):
            raise Invalid("an entry without a resource", expression=["Bundle.entry"])
        found.resources.setdefault(rtype, []).append(body)
    return found


def response(request_id: str, code: str, source: str, note: str | None = None) -> dict[str, Any]:
    """The answer to a message: ``ok``, ``transient-error`` or ``fatal-error``."""
    header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "eventCoding": {"system": EVENT_SYSTEM, "code": "response"},
        "source": {"name": source, "endpoint": f"{MEMBER_SYSTEM}:{source}"},
        "response": {"identifier": request_id, "code": code},
    }
    entries: list[dict[str, Any]] = [{"fullUrl": f"urn:uuid:{request_id}-r", "resource": header}]
    if note:
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": note}],
        }
        header["response"]["details"] = {"reference": f"urn:uuid:{request_id}-o"}
        entries.append({"fullUrl": f"urn:uuid:{request_id}-o", "resource": outcome})
    return {
        "resourceType": "Bundle",
        "type": "message",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "entry": entries,
    }


def request_key(value: str) -> dict[str, str]:
    return {"system": REQUEST_KEY_SYSTEM, "value": value}


def key_of(body: dict[str, Any]) -> str | None:
    """The request key an exchanged ServiceRequest or Task carries."""
    for ident in body.get("identifier", []):
        if ident.get("system") == REQUEST_KEY_SYSTEM and ident.get("value"):
            return str(ident["value"])
    return None
