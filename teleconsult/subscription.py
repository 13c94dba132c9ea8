"""FHIR R4 Subscriptions with the rest-hook channel, delivered through the outbox.

A Subscription is written through ``/fhir/Subscription`` like any resource; ``Subscriptions.check``
is its guard at the records boundary, so every way of writing one (POST, PUT, a transaction
Bundle) is held to the same rules:

- ``criteria`` is ``Type?param=value&...``, parsed by the search machinery (an unknown
  parameter or a bad value is refused, as is a control parameter such as ``_count``); its owner
  must be allowed to search ``Type``. Administrators subscribe to what they read (the
  directory); a doctor or specialist to ``Communication``, their own notifications;
- ``channel.type`` is ``rest-hook``, ``channel.endpoint`` an ``https://`` URL without
  credentials in it, ``channel.payload`` absent or ``application/fhir+json``, each
  ``channel.header`` a ``Name: value`` line (framing headers such as Host are refused);
- ``status`` requested or active is stored active (error cleared); off stays off; error is the
  gateway's to set. The owner (extension ``OWNER``: the user's name and Practitioner) is the
  writer, kept on every later version; an administrator may turn another user's Subscription
  off or back on, or delete it, and change nothing else.

A refusal is a 422 OperationOutcome naming the element. Matching (``Subscriptions.written``, the
records boundary's observer): after versions are written in a unit of work, each active
Subscription on their type runs its criteria with ``_id`` of the written ones through the records
search *as its owner* (the access rules decide what the owner may be told of), inside the same
transaction; a match is an outbox row (channel ``rest-hook``, destination and subject the
Subscription, so one subscriber's notifications go out in order) committed with the change.
Active Subscriptions are cached by type (reloaded after ``TTL`` seconds, at once on this
process's Subscription writes), so a write costs a dictionary look-up when nobody subscribes.

Delivery (``deliver_hook``, called by the delivery workers for ``rest-hook`` rows), as HAPI FHIR
does it (``SubscriptionDeliveringRestHookSubscriber``) and R4 describes: no payload, a ``POST`` to
the endpoint with no body; payload ``application/fhir+json``, a ``PUT`` of the resource, as it
was when it matched, to ``{endpoint}/{type}/{id}``. The Subscription's headers go along, with
``X-Yilian-Notification`` (the outbox row id, the same on every retry, so a receiver can drop a
repeat). 2xx is delivered; 5xx, 408, 429 and connection failures are retried with the outbox's
backoff for as long as its attempts last (HAPI gives up after about a minute); a TLS refusal, a
redirect or another 4xx is a dead letter with its reason, and the Subscription then goes to
``error`` (``Subscription.error`` says why) and its waiting rows are cancelled. Its owner sets it
active again and an operator requeues what was missed (``yilian outbox requeue``).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from sqlalchemy import Connection, event, select

from records import fhirdates, fhirtypes, outbox, query, store, users
from records.audit_log import Event
from records.db import reader
from records.errors import FhirError, Forbidden, Invalid, Unprocessable
from records.outbox import Entry
from records.schema import resource
from records.service import RecordService
from records.store import Stored
from security.access import Action
from security.principal import SYSTEM, Principal, Role
from teleconsult.delivery import DeliveryError, DeliverySettings

log = logging.getLogger(__name__)

OWNER = "urn:yilian:subscription-owner"  # extension: whose Subscription it is (gateway-written)
USER_SYSTEM = "urn:yilian:user"  # identifier system of a gateway user's name
REST_HOOK = "rest-hook"  # Subscription.channel.type, and the outbox channel of its deliveries
FHIR_JSON = "application/fhir+json"
REQUESTED, ACTIVE, ERROR, OFF = "requested", "active", "error", "off"
NOTIFICATIONS = "Communication"  # what doctors and specialists subscribe to
TOPIC = "notify"  # the outbox topic of a rest-hook delivery (the resource is in its payload)
TTL = 2.0  # seconds a process trusts its list of active Subscriptions (other processes' writes)
_CLINICIANS = frozenset({Role.TOWNSHIP_DOCTOR, Role.SPECIALIST})
_FRAMING = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "content-type", "upgrade"}
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_WRITTEN = "yilian.subscription.written"  # in Connection.info: this transaction wrote one
_IDS_PER_SEARCH = 100


@dataclass(frozen=True)
class Active:
    """An active Subscription as matching needs it."""

    id: str
    rtype: str
    params: tuple[tuple[str, str], ...]
    owner: str  # the user's name
    end: datetime | None


def parse_criteria(criteria: Any) -> tuple[str, list[tuple[str, str]]]:
    """``Type?param=value&...`` -> (type, search items), checked by the search machinery."""
    where = ["Subscription.criteria"]
    if not isinstance(criteria, str) or not criteria.strip():
        raise Unprocessable("Subscription.criteria is Type?param=value", expression=where)
    rtype, _, text = criteria.strip().partition("?")
    if rtype not in fhirtypes.STORED_TYPES:
        raise Unprocessable(
            f"Subscription.criteria: '{rtype}' is not a resource type this gateway stores "
            "(write Type?param=value, e.g. Communication?category=urn:yilian:notification|)",
            expression=where,
        )
    items = parse_qsl(text, keep_blank_values=True)
    for key, _ in items:
        if key.partition(":")[0] in query.CONTROL:
            raise Unprocessable(
                f"Subscription.criteria takes search parameters only, not {key}", expression=where
            )
    try:
        request = query.parse(rtype, items, default_count=1, max_count=1)
        query.filter_clauses(request)  # values: dates, references, modifiers
    except Invalid as exc:
        raise Unprocessable(f"Subscription.criteria: {exc.diagnostics}", expression=where) from None
    return rtype, items


def owner_name(body: dict[str, Any]) -> str | None:
    for ext in body.get("extension", []):
        if ext.get("url") == OWNER:
            value = ((ext.get("valueReference") or {}).get("identifier") or {}).get("value")
            return str(value) if value else None
    return None


def _owner_extension(who: Principal) -> dict[str, Any]:
    reference: dict[str, Any] = {}
    if who.practitioner_id:
        reference["reference"] = f"Practitioner/{who.practitioner_id}"
    reference["identifier"] = {"system": USER_SYSTEM, "value": who.username}
    reference["display"] = who.username
    return {"url": OWNER, "valueReference": reference}


def _without(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in keys}
    out["extension"] = [e for e in body.get("extension", []) if e.get("url") != OWNER]
    return out


class Subscriptions:
    """The Subscription guard, the matching observer and the cache of active Subscriptions of
    one records boundary (wired in ``gateway.context``)."""

    def __init__(self, records: RecordService, *, ttl: float = TTL) -> None:
        self.records = records
        self.ttl = ttl
        self._cache: dict[str, list[Active]] | None = None
        self._loaded = 0.0
        self._lock = threading.Lock()
        # a Subscription written in a transaction is known once that connection goes back to
        # the pool (after its commit or rollback); until then, and in other processes, the
        # cache is reloaded every ``ttl`` seconds
        event.listen(records.engine.pool, "checkin", self._checked_in)

    # -- the guard ----------------------------------------------------------------------------

    def check(
        self, who: Principal, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Refuse a Subscription this gateway cannot serve or this writer may not make; return
        it with its owner and status as stored."""
        if new is None or who.role == Role.SYSTEM:
            return None  # a delete (the access rules say who), or the gateway's own change
        body = copy.deepcopy(new)
        if old is not None and owner_name(old) != who.username:
            # an administrator and another user's Subscription: on or off, nothing else
            if _without(body, "meta", "id", "status", "error") != _without(
                old, "meta", "id", "status", "error"
            ):
                raise Forbidden(
                    "an administrator may turn another user's Subscription off or on, or "
                    "delete it; its criteria and channel are its owner's to change",
                    expression=["Subscription"],
                )
            owner = next(e for e in old.get("extension", []) if e.get("url") == OWNER)
        else:
            self._check_criteria(who, body.get("criteria"))
            _check_channel(body.get("channel") or {})
            owner = _owner_extension(who)
        for index, ext in enumerate(body.get("extension", [])):
            if ext.get("url") != OWNER and "valueReference" in ext:
                raise Unprocessable(
                    "a Subscription's extensions hold no references (its owner is the gateway's "
                    "to write)",
                    expression=[f"Subscription.extension[{index}]"],
                )
        body["extension"] = [
            *[e for e in body.get("extension", []) if e.get("url") != OWNER],
            owner,
        ]
        _settle_status(body, old)
        return body

    def _check_criteria(self, who: Principal, criteria: Any) -> None:
        rtype, _ = parse_criteria(criteria)
        if who.role in _CLINICIANS and rtype != NOTIFICATIONS:
            raise Unprocessable(
                f"a {who.role.value} subscribes to their notifications (criteria "
                f"{NOTIFICATIONS}?...), not to {rtype}",
                expression=["Subscription.criteria"],
            )
        decision = self.records.policy.decide(who, rtype, Action.SEARCH)
        if not decision.allowed:
            raise Unprocessable(
                f"Subscription.criteria: you may not search {rtype} ({decision.reason}), so "
                "nothing would ever match",
                expression=["Subscription.criteria"],
            )

    # -- matching ---------------------------------------------------------------------------

    def written(self, conn: Connection, versions: Sequence[Stored]) -> None:
        """The records boundary's observer: enqueue a rest-hook delivery for each active
        Subscription a written version matches, in the writing transaction."""
        for version in versions:
            if version.res_type == "Subscription":
                self._subscription_written(conn, version)
        active = self.active(conn)
        if not active:
            return
        by_type: dict[str, list[Stored]] = {}
        for version in versions:
            if not version.deleted and version.res_type in active:
                by_type.setdefault(version.res_type, []).append(version)
        if not by_type:
            return
        owners: dict[str, Principal | None] = {}
        now = datetime.now(UTC)
        for rtype, written in by_type.items():
            for sub in active[rtype]:
                if sub.end is not None and sub.end <= now:
                    continue
                if sub.owner not in owners:
                    owners[sub.owner] = _principal(conn, sub.owner)
                owner = owners[sub.owner]
                if owner is not None:
                    self._match(conn, sub, owner, written)

    def _match(
        self, conn: Connection, sub: Active, owner: Principal, written: list[Stored]
    ) -> None:
        latest = {version.res_id: version for version in written}
        ids = list(latest)
        matched: set[str] = set()
        for start in range(0, len(ids), _IDS_PER_SEARCH):
            chunk = ",".join(ids[start : start + _IDS_PER_SEARCH])
            try:
                found = self.records.search_in(
                    conn, owner, sub.rtype, [*sub.params, ("_id", chunk)]
                )
            except FhirError as exc:  # the owner may no longer search it: nothing to tell
                log.info("Subscription %s matches nothing: %s", sub.id, exc.diagnostics)
                return
            matched |= {s.res_id for s in found.matches}
        for rid in ids:
            if rid in matched:
                outbox.enqueue(
                    conn,
                    destination=sub.id,
                    channel=REST_HOOK,
                    topic=TOPIC,
                    subject=sub.id,
                    payload={
                        "subscription": sub.id,
                        "resource": f"{sub.rtype}/{rid}",
                        "version": latest[rid].version,
                    },
                )

    def _subscription_written(self, conn: Connection, version: Stored) -> None:
        self.invalidate()
        conn.info[_WRITTEN] = True
        status = "deleted" if version.deleted else version.json().get("status")
        if status != ACTIVE:  # what waited for it goes nowhere now (requeue it when active)
            outbox.cancel_subject(conn, version.res_id, reason=f"the Subscription is {status}")

    def active(self, conn: Connection) -> dict[str, list[Active]]:
        """Active Subscriptions by criteria type (cached)."""
        cached = self._cache
        if cached is not None and time.monotonic() - self._loaded < self.ttl:
            return cached
        found = _load(conn)
        if not conn.info.get(_WRITTEN):  # not what this transaction may yet roll back
            with self._lock:
                self._cache, self._loaded = found, time.monotonic()
        return found

    def invalidate(self) -> None:
        with self._lock:
            self._cache = None

    def _checked_in(self, _dbapi: Any, record: Any) -> None:
        if record is not None and record.info.pop(_WRITTEN, False):
            self.invalidate()


def _load(conn: Connection) -> dict[str, list[Active]]:
    rows = conn.execute(
        select(resource.c.res_id, resource.c.content).where(
            resource.c.res_type == "Subscription", resource.c.deleted.is_(False)
        )
    )
    out: dict[str, list[Active]] = {}
    for row in rows:
        body = json.loads(row.content)
        owner = owner_name(body)
        if body.get("status") != ACTIVE or owner is None:
            continue
        try:
            rtype, items = parse_criteria(body.get("criteria"))
        except FhirError:
            log.warning("Subscription %s has criteria this gateway cannot run", row.res_id)
            continue
        end = fhirdates.parse_range(body["end"]) if body.get("end") else None
        out.setdefault(rtype, []).append(
            Active(row.res_id, rtype, tuple(items), owner, end[1] if end else None)
        )
    return out


def _principal(conn: Connection, username: str) -> Principal | None:
    """The owner as the access rules see them now (None: no longer an active user)."""
    user = users.get(conn, username)
    return user.principal() if user is not None and user.active else None


def _check_channel(channel: dict[str, Any]) -> None:
    if channel.get("type") != REST_HOOK:
        raise Unprocessable(
            f"Subscription.channel.type is {channel.get('type')}: this gateway delivers "
            "rest-hook only (not websocket, email, sms or message)",
            expression=["Subscription.channel.type"],
        )
    endpoint = channel.get("endpoint")
    try:
        parts = urlsplit(str(endpoint or ""))
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        parts = urlsplit("")
    if parts.scheme != "https" or not parts.hostname:
        raise Unprocessable(
            f"Subscription.channel.endpoint is an https:// URL (notifications leave the gateway "
            f"only over TLS), not '{endpoint or ''}'",
            expression=["Subscription.channel.endpoint"],
        )
    if parts.username or parts.password:
        raise Unprocessable(
            "Subscription.channel.endpoint carries no credentials; send them as a "
            "channel.header (Authorization: Bearer ...)",
            expression=["Subscription.channel.endpoint"],
        )
    if channel.get("payload") not in (None, FHIR_JSON):
        raise Unprocessable(
            f"Subscription.channel.payload is absent (a notification without content) or "
            f"{FHIR_JSON} (the resource), not {channel.get('payload')}",
            expression=["Subscription.channel.payload"],
        )
    for index, header in enumerate(channel.get("header") or []):
        name, colon, value = str(header).partition(":")
        problem = None
        if not colon or not _HEADER_NAME.match(name.strip()):
            problem = "is 'Name: value'"
        elif any(c in value for c in "\r\n\0"):
            problem = "is one line"
        elif name.strip().lower() in _FRAMING:
            problem = f"may not set {name.strip()} (the gateway frames the request)"
        if problem:
            raise Unprocessable(
                f"Subscription.channel.header[{index}] {problem}",
                expression=[f"Subscription.channel.header[{index}]"],
            )


def _settle_status(body: dict[str, Any], old: dict[str, Any] | None) -> None:
    status, before = body.get("status"), (old or {}).get("status")
    if status in (REQUESTED, ACTIVE):
        body["status"] = ACTIVE
        body.pop("error", None)
        return
    if status == ERROR and before != ERROR:
        raise Unprocessable(
            "Subscription.status error is set by the gateway when delivery fails; write "
            "requested or active to start it, off to stop it",
            expression=["Subscription.status"],
        )
    if old is not None and old.get("error"):
        body["error"] = old["error"]  # the gateway's note stays until it is active again
    else:
        body.pop("error", None)


# -- delivery -------------------------------------------------------------------------------------


def deliver_hook(records: RecordService, entry: Entry, settings: DeliverySettings) -> None:
    """Deliver one ``rest-hook`` outbox row; raise ``DeliveryError`` when it did not go."""
    sid = str(entry.payload.get("subscription") or entry.destination)
    target = str(entry.payload.get("resource", ""))
    rtype, _, rid = target.partition("/")
    with reader(records.engine).connect() as conn:
        found = store.current(conn, "Subscription", sid)
        if found is None or found.deleted:
            raise DeliveryError(f"Subscription/{sid} was deleted", permanent=True)
        sub = found.json()
        if sub.get("status") != ACTIVE:
            raise DeliveryError(
                f"Subscription/{sid} is {sub.get('status')}: its owner sets it active, then "
                "this row can be requeued",
                permanent=True,
            )
        owner = _principal(conn, owner_name(sub) or "")
        channel = sub.get("channel") or {}
        content: dict[str, Any] | None = None
        if owner is not None and channel.get("payload"):
            content = store.vread(conn, rtype, rid, int(entry.payload["version"])).json()
        current = store.current(conn, rtype, rid)
    try:
        if owner is None:
            raise DeliveryError(
                f"the owner of Subscription/{sid} is no longer an active user", permanent=True
            )
        _send(entry, channel, rtype, rid, content, settings)
    except DeliveryError as exc:
        if exc.permanent or entry.attempts >= settings.backoff.max_attempts:
            _stop(records, sid, exc.reason)
        raise
    patients = (current.patient_id,) if current and current.patient_id else ()
    records.audit(owner, Event("subscription-notify", (target, f"Subscription/{sid}"), patients))


def _send(
    entry: Entry,
    channel: dict[str, Any],
    rtype: str,
    rid: str,
    content: dict[str, Any] | None,
    settings: DeliverySettings,
) -> None:
    headers = {"User-Agent": "yilian-gateway", "X-Yilian-Notification": entry.id}
    for line in channel.get("header") or []:
        name, _, value = str(line).partition(":")
        headers[name.strip()] = value.strip()
    endpoint = str(channel["endpoint"])
    if content is None:  # R4 / HAPI: no payload, a POST with no body
        method, url, data = "POST", endpoint, b""
    else:  # R4 / HAPI: the resource is PUT at {endpoint}/{type}/{id}
        method, url = "PUT", f"{endpoint.rstrip('/')}/{rtype}/{rid}"
        data = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
        headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
    verify: ssl.SSLContext | bool = settings.tls or True
    try:
        with httpx.Client(verify=verify, timeout=settings.timeout) as client:
            response = client.request(method, url, content=data, headers=headers)
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        cause = exc.__cause__ or exc.__context__
        tls = isinstance(cause, ssl.SSLError) or "SSL" in reason or "certificate" in reason
        kind = "TLS refused" if tls else "cannot reach the endpoint"
        raise DeliveryError(f"{kind}: {reason}", permanent=tls) from None
    code = response.status_code
    if code < 300:
        return
    transient = code >= 500 or code in (408, 429)
    what = "redirected (a rest-hook endpoint is called as written)" if code < 400 else "answered"
    raise DeliveryError(
        f"the endpoint {what} {code} {response.reason_phrase}: {response.text[:300]}",
        permanent=not transient,
    )


def _stop(records: RecordService, sid: str, reason: str) -> None:
    """A dead letter: the Subscription goes to ``error``, saying why (the reason's first part:
    the rest may quote the receiver's answer, which stays in the outbox row)."""
    note = f"{fhirdates.instant(datetime.now(UTC))}: rest-hook delivery failed: "
    note += reason.split(": ", 1)[0]

    def work(conn: Connection) -> tuple[None, list[Event]]:
        found = store.current(conn, "Subscription", sid, lock=True)
        if found is None or found.deleted or found.json().get("status") != ACTIVE:
            return None, []
        body = found.json() | {"status": ERROR, "error": note}
        records.update_in(conn, SYSTEM, "Subscription", sid, body)
        return None, [Event("subscription-error", (f"Subscription/{sid}",), detail=note)]

    try:
        records.run(SYSTEM, "subscription-error", work, about=[f"Subscription/{sid}"])
    except FhirError as exc:
        log.warning("Subscription %s could not be set to error: %s", sid, exc.diagnostics)
    log.warning("Subscription %s set to error after a dead letter", sid)
