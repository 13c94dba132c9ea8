"""Notifications to the requesting doctor: FHIR ``Communication`` resources.

When a request's Task moves at the township gateway (received by the hospital, accepted,
rejected and re-routed or not, put on hold, failed, cancelled, completed with a report, not
deliverable, escalated), ``task_changed`` writes a Communication in the unit of work of that
change, so a change that commits is one the doctor is told of, and one that rolls back tells
nobody. The Communication is the notification:

- ``status`` completed, ``category`` a code of ``urn:yilian:notification`` (``CODES``);
- ``subject`` the Patient (a reference only), ``about`` the Task (and the DiagnosticReport);
- ``recipient`` the requesting Practitioner (``Task.requester``), ``sender`` the hospital;
- ``payload``: one line in Chinese, then the same in English, naming the kind of request, the
  hospital and the hospital's reason; no patient name or other details (the web page shows the
  patient from ``subject`` to whoever may read it).

Reading them (``GET /api/notifications``) and marking one read (``received``) go through the
records boundary: the access rules show a Communication only to its recipient
(``security.access``), and ``check``, the Communication guard, lets the recipient change
``received`` and nothing else. A FHIR Subscription on ``Communication`` pushes them
(``teleconsult.subscription``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from records import audit_log, store
from records.audit_log import Event
from records.errors import Forbidden, NotFound, Unprocessable
from records.fhirtypes import organization_id
from records.service import RecordService, SearchResult
from records.store import Stored
from security.access import Action
from security.principal import SYSTEM, Principal, Role

# ``service`` as a module: it may call this one (a module-level name from it would make the
# two depend on which is imported first)
from teleconsult import lifecycle, service
from teleconsult.routing import PRIORITIES

log = logging.getLogger(__name__)

CATEGORY = "urn:yilian:notification"
KIND_EN = {
    "imaging": "remote imaging diagnosis",
    "ecg": "remote ECG diagnosis",
    "consultation": "remote consultation",
}
# code -> (display, Chinese line, English line); {kind} {kind_en} {hospital} {other} {reason}
CODES: dict[str, tuple[str, str, str]] = {
    "received": (
        "request received",
        "{kind}请求已送达{hospital}。",
        "The {kind_en} request has reached {hospital}.",
    ),
    "accepted": (
        "request accepted",
        "{hospital}已接受{kind}请求。",
        "{hospital} accepted the {kind_en} request.",
    ),
    "rejected": (
        "request rejected",
        "{hospital}未接受{kind}请求，且无其他医院可接收，请决定下一步。{reason_zh}",
        "{hospital} declined the {kind_en} request and no other hospital can take it; "
        "please decide what to do.{reason_en}",
    ),
    "rerouted": (
        "request re-routed",
        "{other}未接受{kind}请求，已转至{hospital}。{reason_zh}",
        "{other} declined the {kind_en} request; it was re-routed to {hospital}.{reason_en}",
    ),
    "on-hold": (
        "request on hold",
        "{hospital}暂停了{kind}请求。{reason_zh}",
        "{hospital} put the {kind_en} request on hold.{reason_en}",
    ),
    "failed": (
        "request failed",
        "{hospital}未能完成{kind}请求。{reason_zh}",
        "{hospital} could not complete the {kind_en} request.{reason_en}",
    ),
    "undeliverable": (
        "request not delivered",
        "{kind}请求未能送达{hospital}，管理员可查看原因（yilian outbox）。",
        "The {kind_en} request could not be delivered to {hospital}; the operator has the "
        "reason (yilian outbox).",
    ),
    "cancelled": (
        "request cancelled",
        "{kind}请求已取消（{hospital}）。{reason_zh}",
        "The {kind_en} request was cancelled ({hospital}).{reason_en}",
    ),
    "reported": (
        "report back",
        "{hospital}的{kind}报告已返回。",
        "The {kind_en} report from {hospital} is back.",
    ),
    "escalated": (
        "request escalated",
        "{other}未在时限内接受{kind}请求，已转至{hospital}。",
        "{other} did not take the {kind_en} request by its deadline; it was re-routed to "
        "{hospital}.",
    ),
}
# the same code, when nobody else could take it
_NOWHERE = (
    "request escalated",
    "{hospital}未在时限内接受{kind}请求，且无其他医院可接收，请决定下一步。",
    "{hospital} did not take the {kind_en} request by its deadline and no other hospital can "
    "take it; please decide what to do.",
)
# the same URL as teleconsult.deadlines.ESCALATED: a deadline acted on without a new hospital
# (deadlines will call this module, so this module does not import it)
ESCALATED = "urn:yilian:teleconsult-escalated"
# the Task statuses a doctor is told of (in-progress and resuming are the hospital's business)
_BY_STATUS = {
    lifecycle.RECEIVED: "received",
    lifecycle.ACCEPTED: "accepted",
    lifecycle.REJECTED: "rejected",
    lifecycle.ON_HOLD: "on-hold",
    lifecycle.FAILED: "failed",
    lifecycle.CANCELLED: "cancelled",
    lifecycle.COMPLETED: "reported",
}
_REASON_CHARS = 200


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def code_for(before: str | None, task: dict[str, Any], what: str) -> str | None:
    """Which notification a Task change makes, if any. ``what``: ``status``, ``cancel``,
    ``report`` (the message that moved it), ``delivery-failed``, ``escalated``."""
    status = task.get("status")
    if what == "escalated":
        return "escalated"
    if status == lifecycle.FAILED and (what == "delivery-failed" or before == lifecycle.REQUESTED):
        return "undeliverable"  # a Task fails while still requested only when it never arrived
    if status == before:
        return None
    if status == lifecycle.REQUESTED and before not in (None, lifecycle.DRAFT):
        return "rerouted" if service.passed_over(task) else None
    return _BY_STATUS.get(str(status))


def task_changed(
    records: RecordService,
    conn: Connection,
    task: Stored,
    before: str | None,
    what: str,
    report_id: str | None = None,
    *,
    by: Principal | None = None,
) -> Stored | None:
    """In the caller's unit of work, after ``task`` (the version just written) was written:
    tell its requesting Practitioner what happened, as a Communication. Returns it, or None
    when there is nothing to tell (no change a doctor is told of, no Practitioner requested
    it, or ``by``, who made the change, is the requester)."""
    body = task.json()
    code = code_for(before, body, what)
    recipient = str((body.get("requester") or {}).get("reference", ""))
    if code is None or not recipient.startswith("Practitioner/"):
        return None
    if by is not None and by.practitioner_id and recipient == f"Practitioner/{by.practitioner_id}":
        return None  # the doctor did it: nothing to tell them
    hospital = _organization(conn, (body.get("owner") or {}).get("reference"))
    declined = service.passed_over(body)
    other = (
        _organization(conn, f"Organization/{organization_id(declined[-1])}") if declined else None
    )
    if code == "rejected" and other is not None:
        hospital = other  # nobody else took it: the Task is owned by no one now
    template = CODES[code]
    if code == "escalated" and _stayed(body):
        template = _NOWHERE
    sender = other if code in ("rerouted", "rejected") else hospital
    report_id = report_id or _report_of(body)
    communication: dict[str, Any] = {
        "resourceType": "Communication",
        "language": "zh-CN",
        "status": "completed",
        "category": [
            {
                "coding": [{"system": CATEGORY, "code": code, "display": CODES[code][0]}],
                "text": CODES[code][0],
            }
        ],
        "about": [{"reference": f"Task/{task.res_id}"}],
        "sent": _now(),
        "recipient": [{"reference": recipient}],
        "payload": [{"contentString": line} for line in _lines(template, body, hospital, other)],
    }
    if body.get("priority") in PRIORITIES:
        communication["priority"] = body["priority"]
    patient = str((body.get("for") or {}).get("reference", ""))
    if patient.startswith("Patient/"):
        communication["subject"] = {"reference": patient}
    if report_id and code == "reported":
        communication["about"].append({"reference": f"DiagnosticReport/{report_id}"})
    if sender and code not in ("undeliverable", "escalated"):
        communication["sender"] = sender
    stored, _ = records.create_in(conn, SYSTEM, "Communication", communication)
    audit_log.append(
        conn,
        SYSTEM,
        Event(
            "notify",
            (f"Communication/{stored.res_id}", f"Task/{task.res_id}"),
            (stored.patient_id,) if stored.patient_id else (),
            detail=code,
        ),
    )
    log.info("notification %s (%s) for Task %s", stored.res_id, code, task.res_id)
    return stored


def _organization(conn: Connection, reference: str | None) -> dict[str, Any] | None:
    """A reference to an Organization with its name as display (what the doctor reads)."""
    if not reference or not reference.startswith("Organization/"):
        return None
    found = store.current(conn, "Organization", reference.removeprefix("Organization/"))
    name = found.json().get("name") if found and not found.deleted else None
    return {"reference": reference, "display": str(name)} if name else {"reference": reference}


def _report_of(task: dict[str, Any]) -> str | None:
    for output in task.get("output", []):
        ref = str((output.get("valueReference") or {}).get("reference", ""))
        if ref.startswith("DiagnosticReport/"):
            return ref.removeprefix("DiagnosticReport/")
    return None


def _stayed(task: dict[str, Any]) -> bool:
    """An escalated Task nobody else could take: its deadline is marked as acted on."""
    end = ((task.get("restriction") or {}).get("period") or {}).get("end")
    return any(
        e.get("url") == ESCALATED and e.get("valueString") == end for e in task.get("extension", [])
    )


def _lines(
    template: tuple[str, str, str],
    task: dict[str, Any],
    hospital: dict[str, Any] | None,
    other: dict[str, Any] | None,
) -> list[str]:
    kind = ((task.get("code") or {}).get("coding") or [{}])[0].get("code", "consultation")
    reason = str((task.get("statusReason") or {}).get("text", ""))[:_REASON_CHARS]
    if template is CODES["undeliverable"]:
        reason = ""  # the delivery's reason may quote the other member's answer: the operator's
    values = {
        "kind": service.KIND_TEXT.get(kind, "远程诊断"),
        "kind_en": KIND_EN.get(kind, "remote diagnosis"),
        "hospital": _name(hospital, "医院"),
        "other": _name(other, "医院"),
        "reason_zh": f"原因：{reason}" if reason else "",
        "reason_en": f" Reason: {reason}" if reason else "",
    }
    _, zh, en = template
    return [zh.format(**values), en.format(**values)]


def _name(organization: dict[str, Any] | None, default: str) -> str:
    if not organization:
        return default
    return str(organization.get("display") or organization["reference"].split("/", 1)[1])


# -- the recipient's side: reading, marking read ------------------------------------------------


def recipient_of(who: Principal) -> str | None:
    """The reference a principal's notifications are addressed to."""
    if who.role == Role.RESIDENT and who.patient_id:
        return f"Patient/{who.patient_id}"
    if who.practitioner_id:
        return f"Practitioner/{who.practitioner_id}"
    return None


def listing(
    records: RecordService, who: Principal, *, unread: bool = False, count: int = 20
) -> SearchResult:
    """The caller's notifications, newest first (through the records boundary: access rules
    and audit apply)."""
    me = recipient_of(who)
    items = [
        ("recipient", me or "Practitioner/-"),
        ("category", f"{CATEGORY}|"),
        ("_sort", "-sent,-_lastUpdated"),
        ("_count", str(max(1, count))),
    ]
    if unread:
        items.append(("received:missing", "true"))
    return records.search(who, "Communication", items)


def mark_read(records: RecordService, who: Principal, communication_id: str) -> Stored:
    """The recipient has read a notification: ``received`` is set (once; later calls change
    nothing)."""

    def work(conn: Connection) -> tuple[Stored, list[Event]]:
        scope = records.scope(who, "Communication", Action.UPDATE)
        found = store.current(conn, "Communication", communication_id)
        if (
            found is None
            or found.deleted
            or not records.visible(conn, "Communication", communication_id, scope)
        ):
            raise NotFound(f"Communication/{communication_id} is not known")
        body = found.json()
        stored = found
        if not body.get("received"):
            body["received"] = _now()
            stored, _ = records.update_in(conn, who, "Communication", communication_id, body)
        patients = (stored.patient_id,) if stored.patient_id else ()
        return stored, [Event("notification-read", (f"Communication/{stored.res_id}",), patients)]

    return records.run(who, "notification-read", work, about=[f"Communication/{communication_id}"])


def check(who: Principal, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    """The records boundary's guard for Communication writes: the gateway writes
    notifications; their recipient may set ``received`` and change nothing else."""
    if who.role == Role.SYSTEM:
        return
    if old is None or new is None:
        raise Unprocessable(
            "notifications are written and removed by the gateway", expression=["Communication"]
        )
    me = recipient_of(who)
    if me is None or me not in [r.get("reference") for r in old.get("recipient", [])]:
        raise Forbidden("only its recipient marks a notification read")
    ignored = {"meta", "id", "received"}
    changed = sorted(
        k for k in set(old) | set(new) if k not in ignored and old.get(k) != new.get(k)
    )
    if changed:
        raise Unprocessable(
            "a notification's recipient sets Communication.received and changes nothing else, "
            f"not {', '.join(changed)}",
            expression=[f"Communication.{k}" for k in changed],
        )
    if old.get("received") and new.get("received") != old["received"]:
        raise Unprocessable(
            f"this notification was read at {old['received']}",
            expression=["Communication.received"],
        )


def summary(stored: Stored) -> dict[str, Any]:
    """A notification as the web pages show it."""
    body = stored.json()
    coding = ((body.get("category") or [{}])[0].get("coding") or [{}])[0]
    lines = [p.get("contentString", "") for p in body.get("payload", [])]
    about = [str(a.get("reference", "")) for a in body.get("about", [])]
    return {
        "id": stored.res_id,
        "code": coding.get("code"),
        "text": lines[0] if lines else "",
        "text_en": lines[1] if len(lines) > 1 else "",
        "sent": body.get("sent"),
        "read": body.get("received"),
        "priority": body.get("priority"),
        "patient": (body.get("subject") or {}).get("reference"),
        "sender": (body.get("sender") or {}).get("display")
        or (body.get("sender") or {}).get("reference"),
        "task": next((a.removeprefix("Task/") for a in about if a.startswith("Task/")), None),
        "report": next(
            (
                a.removeprefix("DiagnosticReport/")
                for a in about
                if a.startswith("DiagnosticReport/")
            ),
            None,
        ),
    }
