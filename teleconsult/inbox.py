"""Receiving messages from other members (``POST /fhir/$process-message``).

The caller is a ``peer`` principal whose client certificate named the member (the router checks
that); the message must say it comes from that member. Each message is processed in one unit of
work together with its archive row (``inbound_message``, protocol ``fhir-msg``, the message id as
control ID, the answer kept); deliveries of one message id take turns (``lock_keys``) and look
for an earlier outcome inside that unit of work, so:

- a message accepted before is answered with the first answer and nothing is done twice. The
  id alone decides: the sender builds a message from its record when it sends it, so a retry
  after a lost answer may differ in detail (a later Task note) and is still the same message;
- a message refused before is processed again when it comes again (the cause may be gone: the
  operator registered the sender's key, say);
- a refused message is archived with its reason (DESIGN.md rule 3) and answered with an
  OperationOutcome, which the sender's outbox keeps as the dead letter's reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from records import db, ids, inbound, outbox, store
from records.audit_log import Event
from records.errors import Conflict, FhirError, Forbidden, Invalid, NotFound, Unprocessable
from records.service import RecordService
from records.store import Stored
from security import signing
from security.principal import SYSTEM, Principal
from teleconsult import directory, lifecycle, messages, notify, portable
from teleconsult.messages import Message, key_of
from teleconsult.service import PEER, SELF, SERVICE, Teleconsult, extension, pass_over

PROTOCOL = "fhir-msg"
UID_SYSTEM = "urn:dicom:uid"
_REQUEST_FIELDS = (
    "resourceType", "identifier", "status", "intent", "category", "code", "priority",
    "authoredOn", "reasonCode", "note",
)  # fmt: skip
_TASK_FIELDS = (
    "resourceType", "identifier", "intent", "priority", "code", "authoredOn", "lastModified",
    "restriction", "note",
)  # fmt: skip


def _pick(body: Any, *keys: str) -> dict[str, Any]:
    """Only the named elements of what a member sent."""
    return {k: body[k] for k in keys if k in body} if isinstance(body, dict) else {}


class Inbox:
    def __init__(
        self, records: RecordService, teleconsult: Teleconsult, served: frozenset[str]
    ) -> None:
        self.records = records
        self.teleconsult = teleconsult
        self.served = served  # member codes this gateway receives for (its certificate's)

    def process(self, peer: Principal, member: str, bundle: Any, raw: bytes) -> dict[str, Any]:
        """Process one message from member ``member`` (its code); return the response Bundle."""
        message = messages.parse(bundle)
        if message.source != member:
            raise Forbidden(
                f"the message says it comes from {message.source or 'nobody'}, but the "
                f"certificate names {member}"
            )
        digest = hashlib.sha256(raw).hexdigest()
        handler = self._handlers()[message.event]
        # a refused message that comes again is a new attempt on its archive row
        again: str | None = None
        archive_id = ids.new_id()

        def work(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            nonlocal again, archive_id
            db.lock_keys(conn, [f"{PROTOCOL}|{member}|{message.id}"])
            earlier = inbound.same_control_id(conn, PROTOCOL, member, message.id)
            for row in earlier:
                if row.outcome == "accepted" and row.ack:
                    first: dict[str, Any] = json.loads(row.ack)
                    return first, []
            again = next((row.id for row in earlier if row.content_hash == digest), None)
            archive_id = again or archive_id
            touched, note = handler(conn, peer, message)
            answer = messages.response(message.id, "ok", message.destination, note)
            inbound.record(
                conn,
                archive_id,
                new=again is None,
                **self._archive(message, member, peer, digest, raw, "accepted"),
                ack=json.dumps(answer, ensure_ascii=False).encode(),
                ack_code="AA",  # the column holds HL7-style codes: accepted
                error=None,
                resources=[f"{s.res_type}/{s.res_id}" for s in touched],
                patient_id=next((s.patient_id for s in touched if s.patient_id), None),
            )
            patients = tuple({s.patient_id for s in touched if s.patient_id})
            refs = tuple(f"{s.res_type}/{s.res_id}" for s in touched)
            return answer, [Event(f"teleconsult-receive-{message.event}", refs, patients)]

        try:
            return self.records.run(peer, f"teleconsult-receive-{message.event}", work)
        except FhirError as exc:
            with self.records.engine.begin() as conn:
                inbound.record(
                    conn,
                    archive_id,
                    new=again is None,
                    **self._archive(message, member, peer, digest, raw, "rejected"),
                    error=exc.diagnostics,
                    ack_code="AR",  # refused
                )
            raise

    def _handlers(
        self,
    ) -> dict[str, Callable[[Connection, Principal, Message], tuple[list[Stored], str | None]]]:
        return {
            "request": self._request,
            "status": self._status,
            "cancel": self._status,
            "report": self._report,
        }

    @staticmethod
    def _archive(
        message: Message, member: str, peer: Principal, digest: str, raw: bytes, outcome: str
    ) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL,
            "origin": "https",
            "sender": member,
            "organization": peer.organization,
            "control_id": message.id,
            "content_hash": digest,
            "message_type": message.event,
            "raw": raw,
            "outcome": outcome,
        }

    # -- request: a clinic asks this hospital ---------------------------------------------

    def _request(
        self, conn: Connection, peer: Principal, message: Message
    ) -> tuple[list[Stored], str | None]:
        task_in, sr_in = message.one("Task"), message.one("ServiceRequest")
        key = key_of(task_in)
        if key is None or key_of(sr_in) != key:
            raise Invalid("the Task and ServiceRequest must carry the same request key")
        here = self._served(conn, message)
        owner = (task_in.get("owner") or {}).get("reference")
        if owner != f"Organization/{here}":
            raise Invalid(f"the Task is for {owner}, not {message.destination}")
        existing = self.records.find_by_identifier(conn, "Task", messages.REQUEST_KEY_SYSTEM, key)
        if existing:
            return existing, "already received"
        clinic = f"Organization/{peer.organization}"
        # only what a request says is taken from it; every reference is this gateway's own
        patient_in = {
            **_pick(
                message.one("Patient"), "resourceType", "identifier", "name", "gender", "birthDate"
            ),
            "managingOrganization": {"reference": clinic},
        }
        patient, _ = self.records.patient_by_identifiers(conn, peer, patient_in)
        subject = {
            **_pick(sr_in.get("subject") or {}, "identifier", "display"),
            "reference": f"Patient/{patient.res_id}",
        }
        requester = {**_pick(sr_in.get("requester") or {}, "display"), "reference": clinic}
        sr_body = {
            **_pick(sr_in, *_REQUEST_FIELDS),
            "subject": subject,
            "requester": requester,
            "performer": [{"reference": f"Organization/{here}"}],
        }
        documents = [
            self._document(conn, peer, body, patient.res_id)
            for body in message.resources.get("DocumentReference", [])
        ]
        supporting = [
            self._study(conn, ref, patient.res_id) for ref in sr_in.get("supportingInfo", [])
        ] + [
            {"type": "DocumentReference", "identifier": d.json()["identifier"][0]}
            | {"reference": f"DocumentReference/{d.res_id}"}
            for d in documents
        ]
        if any(supporting):
            sr_body["supportingInfo"] = [s for s in supporting if s]
        sr, _ = self.records.create_in(conn, peer, "ServiceRequest", sr_body)
        task_body = {
            **_pick(task_in, *_TASK_FIELDS),
            "status": lifecycle.RECEIVED,
            "basedOn": [{"reference": f"ServiceRequest/{sr.res_id}"}],
            "focus": {"reference": f"ServiceRequest/{sr.res_id}"},
            "for": subject,
            "requester": requester,
            "owner": {"reference": f"Organization/{here}"},
            "extension": [
                {"url": PEER, "valueString": message.source},
                {"url": SELF, "valueString": message.destination},
            ],
        }
        task, _ = self.records.create_in(conn, peer, "Task", task_body)
        return [patient, sr, task, *documents], None

    def _document(self, conn: Connection, peer: Principal, body: Any, patient: str) -> Stored:
        """A document sent with a request, filed under the resident, held by the clinic."""
        ident = ((body.get("identifier") or [None])[0]) if isinstance(body, dict) else None
        if not isinstance(ident, dict) or not ident.get("value"):
            raise Invalid(
                "a document sent with a request carries its identifier",
                expression=["DocumentReference.identifier"],
            )
        document = portable.document(body) | {
            "identifier": [_pick(ident, "system", "value")],
            "subject": {"reference": f"Patient/{patient}"},
            "custodian": {"reference": f"Organization/{peer.organization}"},
        }
        if not document["content"]:
            raise Invalid(
                "a document sent with a request carries its content",
                expression=["DocumentReference.content"],
            )
        stored, _ = self.records.create_in(conn, peer, "DocumentReference", document)
        return stored

    def _served(self, conn: Connection, message: Message) -> str:
        """The Organization id of the member a message is for, if this gateway serves it."""
        here = directory.organization_of_code(conn, message.destination)
        if here is None or message.destination not in self.served:
            raise NotFound(f"{message.destination} is not a member this gateway serves")
        return here

    def _study(self, conn: Connection, ref: Any, patient: str) -> dict[str, Any] | None:
        """A study the request names, by Study Instance UID, with this gateway's ImagingStudy
        beside it when it has arrived already and belongs to the same resident."""
        ident = (ref.get("identifier") or {}) if isinstance(ref, dict) else {}
        if ident.get("system") != UID_SYSTEM or not isinstance(ident.get("value"), str):
            return None
        out: dict[str, Any] = {
            "type": "ImagingStudy",
            "identifier": _pick(ident, "system", "value"),
        }
        found = self.records.find_by_identifier(conn, "ImagingStudy", UID_SYSTEM, ident["value"])
        if found and found[0].patient_id == patient:
            out["reference"] = f"ImagingStudy/{found[0].res_id}"
        return out

    # -- status and cancel: the other side moved its Task ---------------------------------

    def _shared_task(self, conn: Connection, message: Message) -> tuple[Stored, dict[str, Any]]:
        """The Task a message is about: found by its key, shared with the sender."""
        key = key_of(message.one("Task"))
        if key is None:
            raise Invalid("the Task carries no request key", expression=["Task.identifier"])
        found = self.records.find_by_identifier(conn, "Task", messages.REQUEST_KEY_SYSTEM, key)
        if not found:
            raise NotFound(f"no request {key} here")
        body = found[0].json()
        if extension(body, PEER) != message.source:
            raise Forbidden(f"request {key} is not shared with {message.source}")
        return found[0], body

    def _status(
        self, conn: Connection, peer: Principal, message: Message
    ) -> tuple[list[Stored], str | None]:
        task_in = message.one("Task")
        task, body = self._shared_task(conn, message)
        status = str(task_in.get("status"))
        if message.event == "cancel":
            status = lifecycle.CANCELLED
            outbox.cancel_subject(conn, task.res_id, reason="cancelled by the requester")
        if body.get("status") == status:
            return [task], "no change"
        if body.get("status") == lifecycle.REQUESTED and lifecycle.allowed(
            lifecycle.RECEIVED, status
        ):
            # the hospital answers a request this side has not yet recorded as delivered (its
            # worker was stopped between the delivery and recording it): it was received
            body["status"] = lifecycle.RECEIVED
            task, _ = self.records.update_in(conn, peer, "Task", task.res_id, body)
            body = task.json()
        body["status"] = status
        body["lastModified"] = task_in.get("lastModified") or body.get("lastModified")
        if task_in.get("statusReason"):
            body["statusReason"] = task_in["statusReason"]
        stored, _ = self.records.update_in(conn, peer, "Task", task.res_id, body)
        if status == lifecycle.REJECTED and extension(body, SERVICE):
            stored = self._reroute(conn, stored, message.source)
        notify.task_changed(self.records, conn, stored, task.json().get("status"), message.event)
        return [stored], None

    # -- report: the hospital's signed report comes back ----------------------------------

    def _report(
        self, conn: Connection, peer: Principal, message: Message
    ) -> tuple[list[Stored], str | None]:
        task, body = self._shared_task(conn, message)
        report_in, provenance_in = message.one("DiagnosticReport"), message.one("Provenance")
        signatures = provenance_in.get("signature") or []
        if not signatures:
            raise Invalid("a report comes with its signature", expression=["Provenance.signature"])
        keys = directory.trusted_keys(conn, peer.organization or "")
        if not keys:
            raise Forbidden(
                f"no report-signing key of {message.source} is registered here; an operator "
                f"adds it with `yilian consortium trust {message.source} KEY.json`"
            )
        try:
            signing.verify_signature(portable.signed_form(report_in), signatures[0], keys)
        except signing.SignatureInvalid as exc:
            raise Unprocessable(
                f"the report's signature does not hold ({exc}); it was not filed"
            ) from None
        self._same_request(conn, body, report_in, signatures[0], peer)
        report = {
            **report_in,
            "subject": {**report_in["subject"], "reference": body["for"]["reference"]},
            "basedOn": [{**report_in["basedOn"][0], "reference": body["focus"]["reference"]}],
        }
        stored, _ = self.records.create_in(conn, peer, "DiagnosticReport", report)
        provenance = {  # made here from what was checked, not taken as sent
            "resourceType": "Provenance",
            "target": [{"reference": f"DiagnosticReport/{stored.res_id}"}],
            "recorded": signatures[0]["when"],
            "agent": [
                {
                    "who": _pick(report_in["performer"][0], "identifier", "display"),
                    "onBehalfOf": {"reference": f"Organization/{peer.organization}"},
                }
            ],
            "signature": [signatures[0]],
        }
        prov, _ = self.records.create_in(conn, peer, "Provenance", provenance)
        lifecycle.completed_with_report(
            body, stored.res_id, message.one("Task").get("lastModified")
        )
        done, _ = self.records.update_in(conn, peer, "Task", task.res_id, body)
        notify.task_changed(
            self.records, conn, done, task.json().get("status"), "report", stored.res_id
        )
        return [stored, prov, done], None

    def _same_request(
        self,
        conn: Connection,
        task: dict[str, Any],
        report: dict[str, Any],
        signature: dict[str, Any],
        peer: Principal,
    ) -> None:
        """A signed report is filed only on the request and the resident it was written for,
        signed by the hospital that sends it."""
        if task.get("status") not in (lifecycle.ACCEPTED, lifecycle.IN_PROGRESS):
            raise Conflict(f"the request is {task.get('status')}: it takes no report now")
        based_on = (report.get("basedOn") or [{}])[0]
        if based_on.get("identifier") != messages.request_key(key_of(task) or ""):
            raise Invalid("the report is based on another request", expression=["basedOn"])
        patient = store.read(conn, "Patient", task["for"]["reference"].split("/")[1]).json()
        known = [_pick(i, "system", "value") for i in patient.get("identifier", [])]
        if (report.get("subject") or {}).get("identifier") not in known:
            raise Invalid("the report is about another resident", expression=["subject"])
        if (signature.get("who") or {}).get("reference") != f"Organization/{peer.organization}":
            raise Invalid("the report is signed for another organization", expression=["who"])
        if not report.get("performer"):
            raise Invalid("the report names who read it", expression=["performer"])

    def _reroute(self, conn: Connection, task: Stored, declined_by: str) -> Stored:
        """A hospital declined: route the request elsewhere, unless nobody else can take it
        (the Task then stays rejected, owned by no one, for the doctor to decide)."""
        body = task.json()
        pass_over(body, declined_by)
        try:
            decision = self.teleconsult.decide(conn, self.teleconsult.route_request(conn, body))
        except FhirError:
            body.pop("owner", None)
            body.setdefault("note", []).append(
                {
                    "time": body.get("lastModified"),
                    "text": "无其他医院可接收 no other hospital can take it",
                }
            )
            stored, _ = self.records.update_in(conn, SYSTEM, "Task", task.res_id, body)
            return stored
        return self.teleconsult.reroute(conn, task.res_id, body, decision)
