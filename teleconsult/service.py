"""Remote-diagnosis requests: the core calls behind the JSON API, FHIR and the workers.

Each call is one unit of work at the records boundary (access, audit, outbox together):

- ``submit``: a township doctor's request becomes a ServiceRequest and a Task, routed by the
  rules (the decision is explained on the Task), with outbox rows for the request message and
  the images, all in one transaction;
- ``move``: a status change by a person (accept, hold, cancel ...), checked by the lifecycle
  guard, and told to the other side through the outbox; a draft submitted, or a declined
  request sent again, is routed (again) and dispatched;
- ``reroute``: a request made here goes to another department (declined there, its deadline
  missed, sent again by hand), with the hospitals passed over kept on the Task (``PASSED_OVER``)
  and their specialty kept on the ServiceRequest (``performerType``);
- ``worklist``: a hospital's open Tasks, most urgent first.

Who is on the other side of a Task is kept on it (extension ``PEER``, a member code): the
reading hospital at the township, the requesting clinic at the hospital.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, select

from records import ids, outbox, store
from records.audit_log import Event
from records.errors import Forbidden, Invalid, NotFound, Unprocessable
from records.schema import dicom_instance
from records.service import RecordService
from records.store import Stored
from security import signing
from security.access import Action
from security.principal import SYSTEM, Principal, Role
from teleconsult import directory, lifecycle, notify
from teleconsult.messages import key_of, request_key
from teleconsult.portable import signed_form
from teleconsult.routing import (
    KIND_SYSTEM,
    KINDS,
    PRIORITIES,
    NoRoute,
    RouteDecision,
    RouteRequest,
    RoutingRules,
)

REPORT_SYSTEM = "urn:yilian:teleconsult-report"
DOCUMENT_SYSTEM = "urn:yilian:teleconsult-document"  # a document sent with a request
PEER = "urn:yilian:teleconsult-peer"  # Task extension: the member code on the other side
SELF = "urn:yilian:teleconsult-self"  # Task extension: this side's member code
SERVICE = "urn:yilian:teleconsult-service"  # Task extension: the department routed to
# Task extension, repeated: a member code that declined the request or missed its deadline
PASSED_OVER = "urn:yilian:teleconsult-declined"
SPECIALTY_SYSTEM = "http://snomed.info/sct"
KIND_TEXT = {"imaging": "远程影像诊断", "ecg": "远程心电诊断", "consultation": "远程会诊"}
PRIORITY_ORDER = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}
WORKLIST = (lifecycle.RECEIVED, lifecycle.ACCEPTED, lifecycle.IN_PROGRESS, lifecycle.ON_HOLD)


@dataclass
class RequestForm:
    """What a township doctor fills in."""

    kind: str
    patient: str  # Patient id
    priority: str = "routine"
    question: str = ""  # the clinical question for the specialist
    reason: str = ""
    specialty: str | None = None  # SNOMED CT specialty code
    studies: list[str] = field(default_factory=list)  # ImagingStudy ids
    observations: list[str] = field(default_factory=list)  # Observation ids (ECG)
    documents: list[str] = field(default_factory=list)  # DocumentReference ids
    draft: bool = False

    def check(self) -> None:
        if self.kind not in KINDS:
            raise Invalid(f"kind must be one of {', '.join(KINDS)}", expression=["kind"])
        if self.priority not in PRIORITIES:
            raise Invalid(
                f"priority must be one of {', '.join(PRIORITIES)}", expression=["priority"]
            )
        if self.kind == "imaging" and not self.studies:
            raise Invalid("a remote imaging request names its studies", expression=["studies"])
        if self.kind == "ecg" and not (self.observations or self.studies):
            raise Invalid("a remote ECG request names the ECG", expression=["observations"])


@dataclass
class Submitted:
    service_request: Stored
    task: Stored
    decision: RouteDecision


def extension(body: dict[str, Any], url: str) -> Any:
    for ext in body.get("extension", []):
        if ext.get("url") == url:
            return ext.get("valueString") or ext.get("valueReference")
    return None


def _with_extension(body: dict[str, Any], url: str, value: dict[str, Any]) -> None:
    rest = [e for e in body.get("extension", []) if e.get("url") != url]
    body["extension"] = [*rest, {"url": url, **value}]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Teleconsult:
    def __init__(
        self,
        records: RecordService,
        rules: RoutingRules,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.records = records
        self.rules = rules
        self.signing_key = signing_key
        self.key_id = signing.key_id(signing_key)
        self.clock = clock

    def report(self, who: Principal, task_id: str, form: ReportForm) -> tuple[Stored, Stored]:
        """A specialist reports: (DiagnosticReport, the completed Task)."""
        return ReportWriting(self).write(who, task_id, form)

    def public_jwk(self) -> dict[str, str]:
        """This gateway's report-signing key, for the members that read its reports."""
        return signing.public_jwk(self.signing_key.public_key(), self.key_id)

    # -- the township side -------------------------------------------------------------------

    def submit(self, who: Principal, form: RequestForm) -> Submitted:
        form.check()

        def work(conn: Connection) -> tuple[Submitted, list[Event]]:
            patient = self._visible(conn, who, "Patient", form.patient)
            supporting = [
                self._supporting(conn, who, rtype, rid, patient.res_id)
                for rtype, rids in (
                    ("ImagingStudy", form.studies),
                    ("Observation", form.observations),
                    ("DocumentReference", form.documents),
                )
                for rid in rids
            ]
            origin = directory.organization_code(conn, who.organization or "")
            if origin is None:
                raise Invalid("your account names no consortium member to request for")
            decision = self.decide(
                conn, RouteRequest(form.kind, form.priority, form.specialty, origin)
            )
            key = ids.new_id()
            sr_body = self._service_request(who, form, key, decision)
            if supporting:
                sr_body["supportingInfo"] = supporting
            sr, _ = self.records.create_in(conn, who, "ServiceRequest", sr_body)
            task, _ = self.records.create_in(
                conn, who, "Task", self._task(who, form, key, sr.res_id, decision, origin)
            )
            if not form.draft:
                self.dispatch(conn, task.json() | {"id": task.res_id}, decision)
            event = Event(
                "teleconsult-request",
                (f"ServiceRequest/{sr.res_id}", f"Task/{task.res_id}"),
                (patient.res_id,),
                detail=f"{form.kind} {form.priority} to {decision.service.organization_code}",
            )
            return Submitted(sr, task, decision), [event]

        return self.records.run(who, "teleconsult-request", work, about=[form.patient])

    def visible_task(self, conn: Connection, who: Principal, task_id: str) -> Stored:
        return self._visible(conn, who, "Task", task_id)

    def _visible(self, conn: Connection, who: Principal, rtype: str, rid: str) -> Stored:
        scope = self.records.scope(who, rtype, Action.READ)
        found = store.current(conn, rtype, rid)
        if found is None or found.deleted or not self.records.visible(conn, rtype, rid, scope):
            raise NotFound(f"{rtype}/{rid} is not known")
        return found

    def _supporting(
        self, conn: Connection, who: Principal, rtype: str, rid: str, patient: str
    ) -> dict[str, Any]:
        found = self._visible(conn, who, rtype, rid)
        if found.patient_id != patient:
            raise Invalid(f"{rtype}/{rid} belongs to another patient", expression=[rtype])
        ref: dict[str, Any] = {"reference": f"{rtype}/{rid}", "type": rtype}
        identifiers = found.json().get("identifier") or []
        if identifiers:
            ident = identifiers[0] if isinstance(identifiers, list) else identifiers
            ref["identifier"] = {k: ident[k] for k in ("system", "value") if k in ident}
        elif rtype == "DocumentReference":  # travels with the request, known by this key
            ref["identifier"] = {"system": DOCUMENT_SYSTEM, "value": rid}
        return ref

    def decide(self, conn: Connection, request: RouteRequest) -> RouteDecision:
        try:
            return self.rules.route(
                request,
                directory.services(conn),
                lambda s: directory.queue_length(conn, s.organization),
                self.clock(),
            )
        except NoRoute as exc:
            raise Unprocessable(f"no hospital can take this request: {exc}") from None

    def _service_request(
        self, who: Principal, form: RequestForm, key: str, decision: RouteDecision
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "identifier": [request_key(key)],
            "status": "draft" if form.draft else "active",
            "intent": "order",
            "category": [{"coding": [{"system": KIND_SYSTEM, "code": form.kind}]}],
            "code": {
                "coding": [{"system": KIND_SYSTEM, "code": form.kind}],
                "text": KIND_TEXT[form.kind],
            },
            "priority": form.priority,
            "subject": {"reference": f"Patient/{form.patient}"},
            "authoredOn": _now(),
            "performer": self.performer(decision),
        }
        if form.specialty:
            body["performerType"] = {
                "coding": [{"system": SPECIALTY_SYSTEM, "code": form.specialty}]
            }
        if who.practitioner_id:
            body["requester"] = {"reference": f"Practitioner/{who.practitioner_id}"}
        if form.reason:
            body["reasonCode"] = [{"text": form.reason}]
        if form.question:
            body["note"] = [{"text": form.question}]
        return body

    @staticmethod
    def performer(decision: RouteDecision) -> list[dict[str, Any]]:
        service = decision.service
        return [
            {"reference": f"Organization/{service.organization}"},
            {"reference": f"HealthcareService/{service.id}", "display": service.name},
        ]

    def _task(
        self,
        who: Principal,
        form: RequestForm,
        key: str,
        sr: str,
        decision: RouteDecision,
        origin: str,
    ) -> dict[str, Any]:
        now = _now()
        body: dict[str, Any] = {
            "resourceType": "Task",
            "identifier": [request_key(key)],
            "basedOn": [{"reference": f"ServiceRequest/{sr}"}],
            "focus": {"reference": f"ServiceRequest/{sr}"},
            "status": lifecycle.DRAFT if form.draft else lifecycle.REQUESTED,
            "intent": "order",
            "priority": form.priority,
            "code": {
                "coding": [{"system": KIND_SYSTEM, "code": form.kind}],
                "text": KIND_TEXT[form.kind],
            },
            "for": {"reference": f"Patient/{form.patient}"},
            "authoredOn": now,
            "lastModified": now,
        }
        if who.practitioner_id:
            body["requester"] = {"reference": f"Practitioner/{who.practitioner_id}"}
        _with_extension(body, SELF, {"valueString": origin})
        self.assign(body, decision)
        return body

    @staticmethod
    def assign(task: dict[str, Any], decision: RouteDecision) -> None:
        """Point the Task at the chosen department, with the deadline and the explanation."""
        service = decision.service
        task["owner"] = {"reference": f"Organization/{service.organization}"}
        task["restriction"] = {"period": {"end": decision.deadline.isoformat(timespec="seconds")}}
        task.setdefault("note", []).append(
            {"time": _now(), "text": f"路由 routing: {decision.explanation}"}
        )
        _with_extension(task, PEER, {"valueString": service.organization_code})
        _with_extension(
            task,
            SERVICE,
            {
                "valueReference": {
                    "reference": f"HealthcareService/{service.id}",
                    "display": service.name,
                }
            },
        )

    def dispatch(self, conn: Connection, task: dict[str, Any], decision: RouteDecision) -> None:
        """Outbox rows for a routed request: the request message, then each study's images."""
        organization = decision.service.organization
        fhir = directory.endpoint(conn, organization, directory.FHIR)
        dicom = directory.endpoint(conn, organization, directory.DICOM)
        if fhir is None and dicom is None:
            raise Unprocessable(
                f"{decision.service.organization_code} has no Endpoint to deliver to; "
                "an operator adds one with `yilian consortium endpoint`"
            )
        if fhir is not None:
            outbox.enqueue(
                conn,
                destination=fhir.id,
                channel=directory.FHIR,
                topic="request",
                payload={"task": task["id"]},
                subject=task["id"],
            )
        if dicom is not None:
            for study in self._studies(conn, task):
                outbox.enqueue(
                    conn,
                    destination=dicom.id,
                    channel=directory.DICOM,
                    topic="images",
                    payload={"task": task["id"], "study": study},
                    subject=task["id"],
                )

    def _studies(self, conn: Connection, task: dict[str, Any]) -> list[str]:
        """Study Instance UIDs of the request's images and ECGs (from the DICOM index)."""
        sr = store.read(conn, "ServiceRequest", focus_id(task)).json()
        uids: list[str] = []
        for ref in sr.get("supportingInfo", []):
            value = str((ref.get("identifier") or {}).get("value", "")).removeprefix("urn:oid:")
            if not value:
                continue
            column = (
                dicom_instance.c.study_uid
                if ref.get("reference", "").startswith("ImagingStudy/")
                else dicom_instance.c.sop_uid
            )
            row = conn.execute(
                select(dicom_instance.c.study_uid).where(column == value).limit(1)
            ).first()
            if row is not None and row.study_uid not in uids:
                uids.append(row.study_uid)
        return uids

    # -- either side: a person moves a Task --------------------------------------------------

    def move(
        self,
        who: Principal,
        task_id: str,
        status: str,
        reason: str | None = None,
        *,
        tell: bool = True,
    ) -> Stored:
        """Accept, reject, start, hold, resume, fail or cancel; the other side is told (unless
        ``tell`` is False: the gateway recording what the other side already knows)."""

        def work(conn: Connection) -> tuple[Stored, list[Event]]:
            stored, event = self.move_in(conn, who, task_id, status, reason, tell=tell)
            return stored, [event]

        return self.records.run(who, "teleconsult-status", work, about=[f"Task/{task_id}"])

    def move_in(
        self,
        conn: Connection,
        who: Principal,
        task_id: str,
        status: str,
        reason: str | None = None,
        *,
        tell: bool = True,
    ) -> tuple[Stored, Event]:
        """``move`` inside the caller's unit of work: (the Task, the audit event)."""
        current = self._visible(conn, who, "Task", task_id)
        body = current.json()
        self._check_side(who, body)
        before = body.get("status")
        body["status"] = status
        body["lastModified"] = _now()
        if reason:
            body["statusReason"] = {"text": reason}
        sent_again = (
            status == lifecycle.REQUESTED
            and before in (lifecycle.DRAFT, lifecycle.REJECTED)
            and extension(body, SERVICE)  # a request made here
        )
        if sent_again:
            # submitted, or sent again after a rejection: routed now, by the rules as they are
            lifecycle.check(who, current.json(), body)
            decision = self.decide(conn, self.route_request(conn, body))
            stored = self.reroute(conn, task_id, body, decision)
        else:
            stored, _ = self.records.update_in(conn, who, "Task", task_id, body)
            if status != before and tell:
                self.tell_peer(conn, stored.json() | {"id": task_id})
            if status != before:
                notify.task_changed(self.records, conn, stored, before, "status", by=who)
        event = Event(
            "teleconsult-status",
            (f"Task/{task_id}",),
            (stored.patient_id,) if stored.patient_id else (),
            detail=f"{before} -> {status}",
        )
        return stored, event

    # -- routing again -----------------------------------------------------------------------

    def route_request(self, conn: Connection, task: dict[str, Any]) -> RouteRequest:
        """What the rules route a request made here by: its kind, priority and specialty, and
        the hospitals passed over already."""
        sr = store.read(conn, "ServiceRequest", focus_id(task)).json()
        kind = ((sr.get("category") or [{}])[0].get("coding") or [{}])[0].get("code")
        specialty = next(
            (c.get("code") for c in (sr.get("performerType") or {}).get("coding", [])), None
        )
        return RouteRequest(
            str(kind or "consultation"),
            task.get("priority", "routine"),
            specialty,
            extension(task, SELF),
            frozenset(passed_over(task)),
        )

    def reroute(
        self, conn: Connection, task_id: str, task: dict[str, Any], decision: RouteDecision
    ) -> Stored:
        """Send a request made here to the department ``decision`` chose: the Task (``task``,
        with its new status and notes) and the ServiceRequest point there, what still waited
        for the previous hospital is dropped, and the request and its images go out."""
        task["status"] = lifecycle.REQUESTED
        self.assign(task, decision)
        sr = store.read(conn, "ServiceRequest", focus_id(task)).json()
        sr["performer"] = self.performer(decision)
        sr["status"] = "active"
        code = decision.service.organization_code
        outbox.cancel_subject(conn, task_id, reason=f"routed to {code}")
        self.records.update_in(conn, SYSTEM, "ServiceRequest", focus_id(task), sr)
        # the owner and the routing extensions are the gateway's to change
        stored, _ = self.records.update_in(conn, SYSTEM, "Task", task_id, task)
        self.dispatch(conn, stored.json() | {"id": task_id}, decision)
        return stored

    @staticmethod
    def _check_side(who: Principal, task: dict[str, Any]) -> None:
        """A specialist moves the Tasks their hospital owns; a township doctor the requests
        made here (which carry the department they were routed to)."""
        if who.role == Role.SPECIALIST:
            if task.get("owner", {}).get("reference") != f"Organization/{who.organization}":
                raise Forbidden("this request is owned by another hospital")
        elif who.role == Role.TOWNSHIP_DOCTOR and not extension(task, SERVICE):
            raise Forbidden("this request was made at another member; its hospital moves it")

    def tell_peer(
        self, conn: Connection, task: dict[str, Any], topic: str = "status", **more: str
    ) -> None:
        """Queue a message about this Task for the member on the other side (if it has a
        FHIR endpoint: a PACS-only hospital hears nothing)."""
        target = self.peer_endpoint(conn, task)
        if target is None:
            return
        if topic == "status" and task["status"] == lifecycle.CANCELLED:
            outbox.cancel_subject(conn, task["id"], reason="the request was cancelled")
            if extension(task, SERVICE) and not outbox.sent_or_sending(
                conn, task["id"], target.id, "request"
            ):
                return  # the hospital never had it: nothing to tell
            topic = "cancel"
        outbox.enqueue(
            conn,
            destination=target.id,
            channel=directory.FHIR,
            topic=topic,
            payload={"task": task["id"], "status": task["status"], **more},
            subject=task["id"],
        )

    @staticmethod
    def peer_endpoint(conn: Connection, task: dict[str, Any]) -> directory.Endpoint | None:
        """Where the member on the other side of a Task takes FHIR messages, if anywhere."""
        peer = extension(task, PEER)
        organization = directory.organization_of_code(conn, peer) if peer else None
        return directory.endpoint(conn, organization, directory.FHIR) if organization else None

    # -- the hospital side -------------------------------------------------------------------

    def worklist(self, who: Principal, statuses: tuple[str, ...] = WORKLIST) -> list[Stored]:
        """The open Tasks owned by the caller's hospital: most urgent first, then the nearest
        deadline."""
        items = [
            ("owner", f"Organization/{who.organization}"),
            ("status", ",".join(statuses)),
            ("_count", str(self.records.max_count)),
        ]
        found = self.records.search(who, "Task", items).matches

        def order(task: Stored) -> tuple[int, str]:
            body = task.json()
            deadline = ((body.get("restriction") or {}).get("period") or {}).get("end", "9999")
            return PRIORITY_ORDER.get(body.get("priority", "routine"), 9), deadline

        return sorted(found, key=order)


@dataclass
class ReportForm:
    """What a specialist writes."""

    conclusion: str
    codes: list[dict[str, str]] = field(default_factory=list)  # coded findings (system, code)
    status: str = "final"


class ReportWriting:
    """The hospital side of a report: a DiagnosticReport in its portable form (what travels and
    is signed), the local copy beside it, the signed Provenance, the Task completed."""

    def __init__(self, teleconsult: Teleconsult) -> None:
        self.t = teleconsult

    def write(self, who: Principal, task_id: str, form: ReportForm) -> tuple[Stored, Stored]:
        if not form.conclusion.strip():
            raise Invalid("a report has a conclusion", expression=["conclusion"])
        records = self.t.records

        def work(conn: Connection) -> tuple[tuple[Stored, Stored], list[Event]]:
            if who.role != Role.SPECIALIST:
                raise Forbidden("reports are written by specialists")
            task = self.t.visible_task(conn, who, task_id)
            body = task.json()
            self.t._check_side(who, body)
            if body.get("status") not in (lifecycle.ACCEPTED, lifecycle.IN_PROGRESS):
                raise Unprocessable(
                    f"the request is {body.get('status')}: accept it before reporting",
                    expression=["Task.status"],
                )
            key = task_key(body)
            portable = self.portable(conn, who, body, key, form)
            local = self.localise(conn, portable, body)
            report, _ = records.create_in(conn, who, "DiagnosticReport", local)
            provenance = self.provenance(who, report.res_id, portable)
            prov, _ = records.create_in(conn, who, "Provenance", provenance)
            lifecycle.completed_with_report(body, report.res_id, _now())
            # completed is the report's doing, not a move the specialist makes by hand
            stored, _ = records.update_in(conn, SYSTEM, "Task", task_id, body)
            self.t.tell_peer(conn, stored.json() | {"id": task_id}, "report", report=report.res_id)
            refs = (
                f"DiagnosticReport/{report.res_id}",
                f"Provenance/{prov.res_id}",
                f"Task/{task_id}",
            )
            patients = (report.patient_id,) if report.patient_id else ()
            return (report, stored), [Event("teleconsult-report", refs, patients)]

        return records.run(who, "teleconsult-report", work, about=[f"Task/{task_id}"])

    def portable(
        self, conn: Connection, who: Principal, task: dict[str, Any], key: str, form: ReportForm
    ) -> dict[str, Any]:
        kind = ((task.get("code") or {}).get("coding") or [{}])[0].get("code", "consultation")
        reader: dict[str, Any] = {"display": who.username}
        if who.practitioner_id:
            reader = {
                "identifier": {
                    "system": f"urn:yilian:practitioner:{who.organization}",
                    "value": who.practitioner_id,
                },
                "display": practitioner_name(conn, who.practitioner_id) or who.username,
            }
        report: dict[str, Any] = {
            "resourceType": "DiagnosticReport",
            "identifier": [{"system": REPORT_SYSTEM, "value": ids.new_id()}],
            "basedOn": [{"type": "ServiceRequest", "identifier": request_key(key)}],
            "status": form.status,
            "category": [{"coding": [{"system": KIND_SYSTEM, "code": kind}]}],
            "code": {"text": KIND_TEXT.get(kind, kind) + "报告"},
            "subject": {k: v for k, v in (task.get("for") or {}).items() if k != "reference"},
            "issued": _now(),
            "performer": [reader, {"reference": f"Organization/{who.organization}"}],
            "resultsInterpreter": [reader],
            "conclusion": form.conclusion,
        }
        if not report["subject"]:
            report["subject"] = {"display": "patient"}
        if form.codes:
            report["conclusionCode"] = [
                {"coding": [{k: c[k] for k in ("system", "code", "display") if k in c}]}
                for c in form.codes
            ]
        return report

    def localise(
        self, conn: Connection, portable: dict[str, Any], task: dict[str, Any]
    ) -> dict[str, Any]:
        """The portable report with this gateway's references beside its identifiers."""
        local = json.loads(json.dumps(portable))
        local["subject"]["reference"] = task["for"]["reference"]
        local["basedOn"][0]["reference"] = task["focus"]["reference"]
        return local

    def provenance(
        self, who: Principal, report_id: str, portable: dict[str, Any]
    ) -> dict[str, Any]:
        """Who wrote the report, signed with this hospital's key over its portable form."""
        when = datetime.now(UTC).replace(microsecond=0)
        hospital = f"Organization/{who.organization}"
        signature = signing.provenance_signature(
            signed_form(portable), self.t.signing_key, self.t.key_id, hospital, when
        )
        reader = dict(portable["performer"][0])
        return {
            "resourceType": "Provenance",
            "target": [{"reference": f"DiagnosticReport/{report_id}"}],
            "recorded": when.isoformat(),
            "agent": [{"who": reader, "onBehalfOf": {"reference": hospital}}],
            "signature": [signature],
        }


def passed_over(task: dict[str, Any]) -> list[str]:
    """The member codes that declined a request or missed its deadline."""
    return [e["valueString"] for e in task.get("extension", []) if e.get("url") == PASSED_OVER]


def pass_over(task: dict[str, Any], code: str) -> None:
    task["extension"] = [*task.get("extension", []), {"url": PASSED_OVER, "valueString": code}]


def focus_id(task: dict[str, Any]) -> str:
    """The id of the ServiceRequest a Task tracks."""
    return str(task["focus"]["reference"]).removeprefix("ServiceRequest/")


def practitioner_name(conn: Connection, practitioner_id: str) -> str | None:
    """How a Practitioner's name is written (its first name's text), if the record has one."""
    found = store.current(conn, "Practitioner", practitioner_id)
    names = found.json().get("name", []) if found and not found.deleted else []
    return str(names[0]["text"]) if names and names[0].get("text") else None


def task_key(task: dict[str, Any]) -> str:
    key = key_of(task)
    if key is None:
        raise Invalid(
            "this Task carries no teleconsult request key", expression=["Task.identifier"]
        )
    return key
