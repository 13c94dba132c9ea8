"""The delivery workers: take outbox rows and get them to the other member.

- ``fhir`` rows become a FHIR message (``teleconsult.messages``) built from the record as it is
  now, POSTed to the member's ``{base}/$process-message`` over HTTPS with mutual TLS and a
  bearer token the member issued to this gateway (client credentials, cached until expiry);
- ``dicom`` rows send a study's stored files by C-STORE over TLS (``dicom.send``), renewing the
  row's lease as instances go.

The outcome decides what happens to the row: delivered; retried later (connection refused,
timeout, 5xx, 408, 409, 429); held without using up its attempts when the fault is this
gateway's own configuration (an endpoint switched off or not TLS, no credentials, our
certificate expired: an operator mends it); dead with the reason (TLS refused, other 4xx, a
message the member refused). Each outcome is recorded in one unit of work with what it means
for the Task: a delivered request is ``received`` there, a request that can never be delivered
fails its Task, so the doctor sees it.
Workers run as threads of ``yilian serve`` (``Workers``); every process sharing the database
may run them (``records.outbox`` keeps them from taking the same row).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from sqlalchemy import Connection, Engine

from dicom import index
from dicom.send import Destination, SendError, send
from dicom.storage import ObjectStore
from records import outbox, store
from records.audit_log import Event
from records.db import reader
from records.errors import FhirError
from records.outbox import Backoff, Entry
from records.service import RecordService
from records.store import Stored
from security.principal import SYSTEM
from teleconsult import directory, lifecycle, messages, portable
from teleconsult.deadlines import Deadlines
from teleconsult.service import (
    SELF,
    Teleconsult,
    extension,
    focus_id,
    practitioner_name,
    task_key,
)

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """Why a delivery did not happen: ``permanent`` (dead letter), ``held`` (our configuration:
    wait for the operator without using up attempts), else transient (retry with backoff)."""

    def __init__(self, reason: str, *, permanent: bool = False, held: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.held = held


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str


@dataclass
class DeliverySettings:
    tls: ssl.SSLContext | None  # our client certificate and the consortium CA
    certificate_expires: datetime | None = None  # our client certificate's notAfter
    calling_ae: str = "YILIAN"
    credentials: dict[str, Credentials] = field(default_factory=dict)  # by member code
    lease: timedelta = timedelta(seconds=60)
    backoff: Backoff = field(default_factory=Backoff)
    hold: timedelta = timedelta(seconds=60)  # how long a row waits on a configuration fault
    poll: float = 1.0
    timeout: float = 30.0


class Courier:
    """Delivers one outbox row at a time (``deliver_next``)."""

    def __init__(
        self,
        records: RecordService,
        teleconsult: Teleconsult,
        objects: ObjectStore,
        settings: DeliverySettings,
    ) -> None:
        self.records = records
        self.teleconsult = teleconsult
        self.objects = objects
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._tokens: dict[str, tuple[str, float]] = {}

    @property
    def engine(self) -> Engine:
        return self.records.engine

    def deliver_next(self) -> Entry | None:
        """Claim one due row and deliver it; None when nothing is due."""
        entry = outbox.claim(self.engine, self.name, self.settings.lease)
        if entry is None:
            return None
        try:
            self._deliver(entry)
        except DeliveryError as exc:
            self._failed(entry, exc)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the worker
            log.exception("delivery of outbox row %s failed unexpectedly", entry.id)
            self._failed(
                entry, DeliveryError(f"internal error: {type(exc).__name__}", permanent=False)
            )
        else:
            self._delivered(entry)
        return entry

    # -- one row ----------------------------------------------------------------------------

    def _deliver(self, entry: Entry) -> None:
        if entry.channel == "rest-hook":  # a FHIR Subscription's notification, not a member's
            from teleconsult.subscription import deliver_hook  # (which imports this module)

            return deliver_hook(self.records, entry, self.settings)
        expires = self.settings.certificate_expires
        if expires is not None and expires < datetime.now(UTC):
            raise DeliveryError(
                f"this gateway's client certificate expired at {expires.isoformat()}: "
                "renew consortium_tls_cert (nothing was sent)",
                held=True,
            )
        with reader(self.engine).connect() as conn:
            target = directory.endpoint_by_id(conn, entry.destination)
            if target is None:
                raise DeliveryError(
                    f"Endpoint/{entry.destination} is not in the directory", permanent=True
                )
            if not target.active:
                raise DeliveryError(f"Endpoint/{target.id} is off: waiting for it", held=True)
            try:
                target.check()
            except directory.DirectoryError as exc:
                raise DeliveryError(f"{exc} (nothing was sent)", held=True) from None
            code = directory.organization_code(conn, target.organization) or ""
            if entry.channel == directory.FHIR:
                bundle = self.outgoing(conn, entry, code)
        if entry.channel == directory.FHIR:
            self._post(target, code, bundle)
        elif entry.channel == directory.DICOM:
            self._send_study(entry, target)
        else:
            raise DeliveryError(f"unknown channel {entry.channel}", permanent=True)

    def outgoing(self, conn: Connection, entry: Entry, destination: str) -> dict[str, Any]:
        """The message for a ``fhir`` row, built from the record as it is now."""
        task = store.read(conn, "Task", entry.payload["task"]).json()
        source = extension(task, SELF) or ""
        key = task_key(task)
        resources: list[dict[str, Any]]
        if entry.topic == "request":
            resources = self._request(conn, task, key)
        elif entry.topic == "report":
            resources = [self._task_status(task, key, entry.payload.get("status"))]
            resources += self._report(conn, entry.payload["report"])
        else:
            resources = [self._task_status(task, key, entry.payload.get("status"))]
        return messages.message(
            entry.id, entry.topic, source, destination, resources, timestamp=entry.created
        )

    def _request(self, conn: Connection, task: dict[str, Any], key: str) -> list[dict[str, Any]]:
        sr = store.read(conn, "ServiceRequest", focus_id(task)).json()
        patient = store.read(
            conn, "Patient", task["for"]["reference"].removeprefix("Patient/")
        ).json()
        subject = portable.patient_reference(patient)
        request = portable.strip(sr)
        request["subject"] = subject
        request["performer"] = [
            p for p in sr.get("performer", []) if p.get("reference", "").startswith("Organization/")
        ]
        request["supportingInfo"] = [
            r for r in (portable.by_identifier(i) for i in sr.get("supportingInfo", [])) if r
        ]
        if not request["supportingInfo"]:
            del request["supportingInfo"]
        request["requester"] = self._requester(conn, sr, patient)
        sent = portable.strip(task)
        for local in ("basedOn", "focus", "owner", "requester", "extension", "note"):
            sent.pop(local, None)
        sent["for"] = subject
        sent["focus"] = portable.key_reference(key, "ServiceRequest")
        sent["owner"] = task["owner"]
        documents = [
            portable.document(
                store.read(
                    conn, "DocumentReference", ref["reference"].removeprefix("DocumentReference/")
                ).json()
            )
            | {"identifier": [ref["identifier"]]}
            for ref in sr.get("supportingInfo", [])
            if ref.get("reference", "").startswith("DocumentReference/") and ref.get("identifier")
        ]
        return [sent, request, portable.patient(patient), *(d for d in documents if d["content"])]

    @staticmethod
    def _requester(conn: Connection, sr: dict[str, Any], patient: dict[str, Any]) -> dict[str, Any]:
        clinic = (patient.get("managingOrganization") or {}).get("reference")
        ref: dict[str, Any] = {"reference": clinic} if clinic else {}
        who = (sr.get("requester") or {}).get("reference", "")
        name = (
            practitioner_name(conn, who.split("/", 1)[1])
            if who.startswith("Practitioner/")
            else None
        )
        if name:
            ref["display"] = name
        return ref

    @staticmethod
    def _report(conn: Connection, report_id: str) -> list[dict[str, Any]]:
        """The report as it was signed, and its signed Provenance."""
        report = store.read(conn, "DiagnosticReport", report_id).json()
        provenance = next(
            (
                p
                for p in store.referring(
                    conn, "Provenance", "target", f"DiagnosticReport/{report_id}"
                )
                if p.get("signature")
            ),
            None,
        )
        if provenance is None:
            raise DeliveryError(
                f"DiagnosticReport/{report_id} has no signed Provenance", permanent=True
            )
        ident = report["identifier"][0]
        sent = portable.strip(provenance)
        sent["target"] = [{"type": "DiagnosticReport", "identifier": ident}]
        return [portable.signed_form(report), sent]

    @staticmethod
    def _task_status(task: dict[str, Any], key: str, status: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resourceType": "Task",
            "identifier": [messages.request_key(key)],
            "status": status or task["status"],
            "intent": task.get("intent", "order"),
            "lastModified": task.get("lastModified"),
        }
        if task.get("statusReason"):
            out["statusReason"] = task["statusReason"]
        return {k: v for k, v in out.items() if v is not None}

    def _post(self, target: directory.Endpoint, code: str, bundle: dict[str, Any]) -> None:
        url = target.address.rstrip("/") + "/$process-message"
        headers = {
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
            "Authorization": f"Bearer {self._token(target, code)}",
        }
        response = self._http(lambda c: c.post(url, json=bundle, headers=headers))
        if response.status_code == 401:  # the token expired or the member's key turned
            self._tokens.pop(code, None)
            raise DeliveryError(
                "the member did not take our token; a new one next time", permanent=False
            )
        self._judge(response, "the message")

    def _token(self, target: directory.Endpoint, code: str) -> str:
        cached = self._tokens.get(code)
        if cached and cached[1] > time.monotonic() + 30:
            return cached[0]
        credentials = self.settings.credentials.get(code)
        if credentials is None:
            raise DeliveryError(
                f"no credentials for {code}: set peer_credentials.{code} (client_id, "
                "client_secret) in the gateway's settings",
                held=True,
            )
        url = urljoin(target.address, "/auth/token")
        form = {
            "grant_type": "client_credentials",
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
        }
        response = self._http(lambda c: c.post(url, data=form))
        self._judge(response, "the token request")
        body = response.json()
        self._tokens[code] = (
            body["access_token"],
            time.monotonic() + float(body.get("expires_in", 300)),
        )
        return str(body["access_token"])

    def _http(self, call: Callable[[httpx.Client], httpx.Response]) -> httpx.Response:
        verify: ssl.SSLContext | bool = self.settings.tls or True
        try:
            with httpx.Client(verify=verify, timeout=self.settings.timeout) as client:
                return call(client)
        except httpx.ConnectError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLError) or "SSL" in str(exc) or "certificate" in str(exc):
                raise DeliveryError(f"TLS refused: {exc}", permanent=True) from None
            raise DeliveryError(f"cannot connect: {exc}", permanent=False) from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            permanent = "SSL" in reason or "certificate" in reason
            raise DeliveryError(
                f"{'TLS refused' if permanent else 'connection failed'}: {reason}",
                permanent=permanent,
            ) from None

    @staticmethod
    def _judge(response: httpx.Response, what: str) -> None:
        if response.status_code < 300:
            return
        try:
            detail = response.json()["issue"][0]["diagnostics"]
        except Exception:  # noqa: BLE001 - any body: show its start
            detail = response.text[:300]
        # 409: the member's record was busy with the same Task at that instant
        transient = response.status_code >= 500 or response.status_code in (408, 409, 429)
        raise DeliveryError(
            f"{what} was answered {response.status_code}: {detail}", permanent=not transient
        )

    def _send_study(self, entry: Entry, target: directory.Endpoint) -> None:
        ae_title, host, port = target.dicom_parts()
        if self.settings.tls is None:
            raise DeliveryError(
                "the destination wants DICOM over TLS and this gateway has no client certificate",
                permanent=True,
            )
        with reader(self.engine).connect() as conn:
            rows = index.study_rows(conn, entry.payload["study"])
        paths = [Path(self.objects.path(row.storage_key)) for row in rows]
        if not paths:
            raise DeliveryError("the study has no stored instances", permanent=True)
        destination = Destination(
            host,
            port,
            ae_title,
            calling_ae=self.settings.calling_ae,
            tls=self.settings.tls,
        )
        last = [time.monotonic()]

        def progress(_uid: str) -> None:
            if time.monotonic() - last[0] > self.settings.lease.total_seconds() / 3:
                last[0] = time.monotonic()
                if not outbox.renew(self.engine, entry, self.settings.lease):
                    raise DeliveryError(
                        "the row was taken back (lease lost or cancelled)", permanent=False
                    )

        try:
            report = send(
                paths,
                destination,
                timeout=self.settings.timeout,
                progress=progress,  # from one association's thread at a time; raises to stop all
                associations=None,  # dicom.send.default_associations: up to 3 at once
            )
        except SendError as exc:
            raise DeliveryError(exc.reason, permanent=exc.permanent) from None
        if report.failed:
            _uid, status, reason = report.failed[0]
            raise DeliveryError(
                f"{len(report.failed)} of {len(paths)} instances refused; "
                f"the first with 0x{status:04X}: {reason}",
                permanent=False,
            )

    # -- after the outcome ---------------------------------------------------------------------

    def _delivered(self, entry: Entry) -> None:
        """The row is delivered, and a request the member now holds is ``received`` here, in
        one unit of work (the member's answers, which may come at once, find it so)."""
        task_id = entry.payload.get("task")

        def work(conn: Connection) -> tuple[None, list[Event]]:
            if not outbox.delivered(conn, entry):
                return None, []  # no longer our claim: its holder records the outcome
            if task_id is None:
                return None, []  # not a request's (a Subscription's notification audits its own)
            task = store.current(conn, "Task", task_id)
            patients = (task.patient_id,) if task and task.patient_id else ()
            events = [
                Event(
                    f"teleconsult-deliver-{entry.topic}",
                    (f"Task/{task_id}", f"Endpoint/{entry.destination}"),
                    patients,
                )
            ]
            if entry.topic == "request" and self._is(task, lifecycle.REQUESTED, conn, entry):
                events += self._move(conn, task, lifecycle.RECEIVED, None)
            return None, events

        self.records.run(SYSTEM, f"teleconsult-deliver-{entry.topic}", work)

    def _failed(self, entry: Entry, exc: DeliveryError) -> None:
        # the log gets what kind of failure it was; the whole reason, which may quote the
        # other member's answer about a resident, stays in the outbox row for the operator
        kind = "held" if exc.held else "permanent" if exc.permanent else "will retry"
        log.warning(
            "delivery of outbox row %s to %s failed (%s, attempt %d): %s; "
            "`yilian outbox show` has the rest",
            entry.id,
            entry.destination,
            kind,
            entry.attempts,
            exc.reason.split(":", 1)[0],
        )
        task_id = entry.payload.get("task")

        def work(conn: Connection) -> tuple[None, list[Event]]:
            status = outbox.failed(
                conn,
                entry,
                exc.reason,
                permanent=exc.permanent,
                backoff=self.settings.backoff,
                hold=self.settings.hold if exc.held else None,
            )
            task = store.current(conn, "Task", task_id) if task_id and status else None
            if self._is(task, lifecycle.CANCELLED, conn) and status == outbox.PENDING:
                # cancelled while this attempt was under way: no further attempts
                outbox.cancel_subject(conn, str(task_id), reason="the request was cancelled")
            elif (
                status == outbox.DEAD
                and entry.topic == "request"
                and self._is(task, lifecycle.REQUESTED, conn, entry)
            ):
                reason = f"could not be delivered: {exc.reason}"
                return None, self._move(conn, task, lifecycle.FAILED, reason)
            return None, []

        self.records.run(SYSTEM, "teleconsult-deliver-failed", work)

    def _is(
        self, task: Stored | None, status: str, conn: Connection, entry: Entry | None = None
    ) -> bool:
        """Whether the Task is live with this status (and, given the row, still meant for the
        row's destination: not routed elsewhere since)."""
        if task is None or task.deleted or task.json().get("status") != status:
            return False
        if entry is None:
            return True
        target = self.teleconsult.peer_endpoint(conn, task.json())
        return target is not None and target.id == entry.destination

    def _move(
        self, conn: Connection, task: Stored | None, status: str, reason: str | None
    ) -> list[Event]:
        assert task is not None
        try:
            _stored, event = self.teleconsult.move_in(
                conn, SYSTEM, task.res_id, status, reason, tell=False
            )
        except FhirError as exc:
            log.warning("Task %s could not move to %s: %s", task.res_id, status, exc.diagnostics)
            return []
        return [event]


class Workers:
    """Delivery threads of ``yilian serve``."""

    def __init__(
        self,
        courier: Courier,
        count: int = 1,
        *,
        deadlines: Deadlines | None = None,
        every: float = 60.0,
    ) -> None:
        self.courier = courier
        self.count = count
        self.deadlines = deadlines  # swept every ``every`` seconds by a thread of its own
        self.every = every
        self._stop = threading.Event()
        self._bell = outbox.Doorbell(courier.engine)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.count):
            thread = threading.Thread(target=self._run, name=f"delivery-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.deadlines is not None and self.every > 0:
            thread = threading.Thread(target=self._sweep, name="deadlines", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _sweep(self) -> None:
        assert self.deadlines is not None
        while not self._stop.wait(self.every):
            try:
                self.deadlines.sweep()
            except Exception:  # noqa: BLE001 - the database may be briefly unavailable
                log.exception("deadline sweep failed")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.courier.deliver_next()
            except Exception:  # noqa: BLE001 - the database may be briefly unavailable
                log.exception("delivery worker: claiming failed")
                done = None
            if done is None:
                self._bell.wait(self.courier.settings.poll)

    def stop(self) -> None:
        self._stop.set()
        self._bell.event.set()
        for thread in self._threads:
            thread.join(timeout=30)
