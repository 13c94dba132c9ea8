"""Missed deadlines: a request no specialist has accepted by its deadline goes elsewhere.

``Deadlines.sweep`` (run every ``escalation_interval`` seconds by a thread of ``yilian serve``)
finds the requests made here that are still ``requested`` or ``received`` after their deadline
and escalates each in one unit of work:

- the rules choose another department (``RoutingRules.escalate``: the rule's ``escalate_to``
  list first, never the hospital that missed it), the Task says why, and the request and its
  images go there with a new deadline; the hospital that missed it is kept as passed over and,
  if it had the request, is told it was withdrawn (a ``cancel`` message);
- when no one else can take it, the Task stays where it is with a note, and the deadline is
  marked as acted on (``ESCALATED``) so the next sweep leaves it alone.

A request a specialist has accepted is not taken away from them when its deadline passes.
Several gateway processes may sweep at once: each Task is escalated under a lock, after reading
it again.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from records import db, outbox, store
from records.audit_log import Event
from records.errors import FhirError
from records.store import Stored
from security.principal import SYSTEM
from teleconsult import directory, lifecycle, notify
from teleconsult.routing import NoRoute
from teleconsult.service import PEER, SERVICE, Teleconsult, _now, extension, pass_over

log = logging.getLogger(__name__)

ESCALATED = "urn:yilian:teleconsult-escalated"  # Task extension: the deadline acted on
WAITING = (lifecycle.REQUESTED, lifecycle.RECEIVED)


def deadline(task: dict[str, Any]) -> datetime | None:
    end = ((task.get("restriction") or {}).get("period") or {}).get("end")
    return datetime.fromisoformat(end) if end else None


class Deadlines:
    def __init__(self, teleconsult: Teleconsult) -> None:
        self.t = teleconsult
        self.records = teleconsult.records

    def overdue(self, task: dict[str, Any], now: datetime) -> bool:
        """A request made here, not yet accepted, past a deadline not yet acted on."""
        end = deadline(task)
        return (
            task.get("status") in WAITING
            and bool(extension(task, SERVICE))
            and end is not None
            and end < now
            and extension(task, ESCALATED) != task["restriction"]["period"]["end"]
        )

    def sweep(self) -> list[Stored]:
        """Escalate every overdue request; returns the Tasks changed."""
        now = self.t.clock()
        items = [("status", ",".join(WAITING)), ("_count", str(self.records.max_count))]
        found = self.records.search(SYSTEM, "Task", items).matches
        changed = []
        for task in found:
            if not self.overdue(task.json(), now):
                continue
            try:
                done = self.escalate(task.res_id)
            except FhirError as exc:
                log.warning("Task %s could not be escalated: %s", task.res_id, exc.diagnostics)
                continue
            if done is not None:
                changed.append(done)
        return changed

    def escalate(self, task_id: str) -> Stored | None:
        def work(conn: Connection) -> tuple[Stored | None, list[Event]]:
            db.lock_keys(conn, [f"escalate|{task_id}"])
            current = store.current(conn, "Task", task_id)
            now = self.t.clock()
            if current is None or current.deleted or not self.overdue(current.json(), now):
                return None, []  # moved on, or another process escalated it
            body = current.json()
            missed = str(extension(body, PEER) or "")
            stored, detail = self._elsewhere(conn, task_id, body, missed, now)
            notify.task_changed(self.records, conn, stored, current.json()["status"], "escalated")
            patients = (stored.patient_id,) if stored.patient_id else ()
            return stored, [
                Event("teleconsult-escalate", (f"Task/{task_id}",), patients, detail=detail)
            ]

        return self.records.run(SYSTEM, "teleconsult-escalate", work, about=[f"Task/{task_id}"])

    def _elsewhere(
        self, conn: Connection, task_id: str, body: dict[str, Any], missed: str, now: datetime
    ) -> tuple[Stored, str]:
        services = directory.services(conn)
        service_id = str((extension(body, SERVICE) or {}).get("reference", "")).split("/")[-1]
        current = next((s for s in services if s.id == service_id), None)
        request = self.t.route_request(conn, body)
        try:
            if current is None:
                raise NoRoute(f"the department {service_id} is no longer in the directory")
            decision = self.t.rules.escalate(
                request,
                current,
                services,
                lambda s: directory.queue_length(conn, s.organization),
                now,
            )
        except NoRoute as exc:
            body["extension"] = [
                *body.get("extension", []),
                {"url": ESCALATED, "valueString": body["restriction"]["period"]["end"]},
            ]
            body.setdefault("note", []).append(
                {"time": _now(), "text": f"期限已过，无其他医院可接收 deadline missed: {exc}"}
            )
            stored, _ = self.records.update_in(conn, SYSTEM, "Task", task_id, body)
            return stored, f"deadline missed at {missed}; nobody else can take it"
        # the hospital that missed it hears the request was withdrawn, if it had it
        target = self.t.peer_endpoint(conn, body)
        told = target is not None and outbox.sent_or_sending(conn, task_id, target.id, "request")
        pass_over(body, missed)
        stored = self.t.reroute(conn, task_id, body, decision)
        if target is not None and told:
            outbox.enqueue(
                conn,
                destination=target.id,
                channel=directory.FHIR,
                topic="cancel",
                payload={"task": task_id, "status": lifecycle.CANCELLED},
                subject=task_id,
            )
        return stored, f"deadline missed at {missed}; to {decision.service.organization_code}"
