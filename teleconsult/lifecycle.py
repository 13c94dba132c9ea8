"""The life of a remote-diagnosis Task: which status may follow which, and who may move it.

    draft -> requested -> received -> accepted | rejected
    accepted -> in-progress <-> on-hold -> completed | failed
    cancelled from any open status; rejected -> requested when the request is routed elsewhere
    (or sent again); received -> requested when the gateway routes it elsewhere because its
    deadline passed

The table is enforced as a write guard at the records boundary (``check``), so a FHIR ``PUT``, a
transaction Bundle, the JSON API and the delivery workers all obey the same rules. A refused move
is a 422 OperationOutcome naming both statuses.
"""

from __future__ import annotations

import json
from typing import Any

from records.errors import Unprocessable
from security.principal import Principal, Role

DRAFT, REQUESTED, RECEIVED = "draft", "requested", "received"
ACCEPTED, REJECTED = "accepted", "rejected"
IN_PROGRESS, ON_HOLD = "in-progress", "on-hold"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"

NEXT: dict[str, frozenset[str]] = {
    DRAFT: frozenset({REQUESTED, CANCELLED}),
    REQUESTED: frozenset({RECEIVED, REJECTED, CANCELLED, FAILED}),
    RECEIVED: frozenset({ACCEPTED, REJECTED, CANCELLED, FAILED, REQUESTED}),
    ACCEPTED: frozenset({IN_PROGRESS, ON_HOLD, COMPLETED, CANCELLED, FAILED}),
    REJECTED: frozenset({REQUESTED, CANCELLED}),
    IN_PROGRESS: frozenset({ON_HOLD, COMPLETED, FAILED, CANCELLED}),
    ON_HOLD: frozenset({IN_PROGRESS, FAILED, CANCELLED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}
STATUSES = frozenset(NEXT)
OPEN = frozenset(s for s, nxt in NEXT.items() if nxt)
FIRST = frozenset({DRAFT, REQUESTED})  # what a new request's Task may start as

# The moves each side makes by hand; the gateway itself (system, peer gateways) makes any
# legal move: it records what happened at the other end.
_BY_ROLE: dict[Role, frozenset[str]] = {
    Role.TOWNSHIP_DOCTOR: frozenset({DRAFT, REQUESTED, CANCELLED}),
    # completed comes with the report (``Teleconsult.report``), never by hand
    Role.SPECIALIST: frozenset({ACCEPTED, REJECTED, IN_PROGRESS, ON_HOLD, FAILED}),
}
_ANY_MOVE = frozenset({Role.SYSTEM, Role.PEER})
# moves only the gateway itself makes: escalation after a missed deadline
_SYSTEM_ONLY = frozenset({(RECEIVED, REQUESTED)})


def completed_with_report(task: dict[str, Any], report_id: str, modified: str | None) -> None:
    """Close a Task with the report it asked for (both sides do this when a report is made or
    arrives)."""
    task["status"] = COMPLETED
    task["lastModified"] = modified or task.get("lastModified")
    task["output"] = [
        {
            "type": {"text": "report"},
            "valueReference": {"reference": f"DiagnosticReport/{report_id}"},
        }
    ]


def allowed(current: str | None, new: str) -> bool:
    if current is None:
        return new in STATUSES
    return new == current or new in NEXT.get(current, frozenset())


_OURS = "urn:yilian:teleconsult"  # the prefix of the gateway's own identifiers and extensions
_FIXED = ("for", "focus", "basedOn")  # what a request is about never changes
_ROUTED = ("owner",)  # who has it changes only when the gateway routes it


def _ours(body: dict[str, Any], element: str) -> list[str]:
    return sorted(
        json.dumps(item, sort_keys=True)
        for item in body.get(element) or []
        if str(item.get("system" if element == "identifier" else "url", "")).startswith(_OURS)
    )


def _check_fixed(who: Principal, old: dict[str, Any], new: dict[str, Any]) -> None:
    """A Task's subject, request and key stay; its owner and routing extensions are the
    gateway's to change (when it routes again), no one else's."""
    fixed = [*_FIXED, "identifier"]
    if who.role != Role.SYSTEM:
        fixed += [*_ROUTED, "extension"]
    for element in fixed:
        if element in ("identifier", "extension"):
            same = _ours(old, element) == _ours(new, element)
        else:
            same = old.get(element) == new.get(element)
        if not same:
            raise Unprocessable(
                f"Task.{element} is set when the request is made and cannot be changed"
                + ("" if element in _FIXED or element == "identifier" else " by hand"),
                expression=[f"Task.{element}"],
            )


def check(who: Principal, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    """The records boundary's guard for Task writes: refuse a move the table does not allow,
    one this principal's side does not make, a change to what the request is about, or a
    delete (a request is cancelled, so the other side is told)."""
    if new is None:
        if who.role != Role.SYSTEM:
            raise Unprocessable(
                "a remote-diagnosis Task is not deleted: cancel it ($cancel) and the other "
                "side is told",
                expression=["Task"],
            )
        return
    if old is not None:
        _check_fixed(who, old, new)
    status = new.get("status")
    before = old.get("status") if old else None
    if status not in STATUSES:
        raise Unprocessable(
            f"Task status '{status}' is not one this gateway tracks "
            f"({', '.join(sorted(STATUSES))})",
            expression=["Task.status"],
        )
    if before is None and who.role not in _ANY_MOVE and status not in FIRST:
        raise Unprocessable(
            f"a new Task starts as draft or requested, not {status}", expression=["Task.status"]
        )
    if not allowed(before, status):
        follow = ", ".join(sorted(NEXT.get(before or "", ()))) or "nothing: it is closed"
        raise Unprocessable(
            f"a Task cannot go from {before} to {status}; from {before} it may go to {follow}",
            expression=["Task.status"],
        )
    if (before, status) in _SYSTEM_ONLY and who.role != Role.SYSTEM:
        raise Unprocessable(
            f"a Task goes from {before} back to {status} only when the gateway routes it "
            "elsewhere (its deadline passed)",
            expression=["Task.status"],
        )
    if status != before and who.role not in _ANY_MOVE:
        own = _BY_ROLE.get(who.role, frozenset())
        if status not in own:
            raise Unprocessable(
                f"a {who.role.value} does not move a Task to {status}",
                expression=["Task.status"],
            )
