"""The one core service every HL7 v2 listener calls (MLLP, HTTP, reprocess).

receive(raw) -> Reply: parse, check the sender, detect a repeat, translate, then in one unit of
work write the resources, their Provenance, the archived message with its outcome and ACK, and
the audit record. The ACK is returned only after that commit. A refusal is a value (AE/AR with
ERR segments naming segment and field, archived as rejected); an infrastructure fault is an
exception, on which the listener closes the connection without an ACK so the sender retries.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from adapters.hl7v2 import ack
from adapters.hl7v2.errors import (
    DUPLICATE_KEY,
    INTERNAL_ERROR,
    UNKNOWN_KEY,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_PROCESSING_ID,
    UNSUPPORTED_VERSION,
    Hl7Error,
    Location,
)
from adapters.hl7v2.escape import unescape
from adapters.hl7v2.mapping import adt, mdm, orders, oru, siu
from adapters.hl7v2.mapping.datatypes import dtm, urn_part
from adapters.hl7v2.mapping.translation import Context, Translation
from adapters.hl7v2.message import Message, parse, split_frame
from records import audit_log, db, ids, inbound
from records.audit_log import Event
from records.committer import GroupCommitter
from records.errors import FhirError
from records.fhirtypes import ORG_CODE_SYSTEM, organization_id
from records.identity import RESIDENT_ID_SYSTEM
from records.provenance import ingest_provenance
from records.service import RecordService
from records.staging import Staged, StaleSnapshot
from records.store import Stored
from security.principal import Principal, Role

log = logging.getLogger(__name__)

PROTOCOL = "hl7v2"
MAPPERS = {
    "ADT": adt.translate,
    "ORU": oru.translate,
    "ORM": orders.translate,
    "OML": orders.translate,
    "MDM": mdm.translate,
    "SIU": siu.translate,
}
# A staged message whose snapshot went stale is prepared again (in a worker) this many times
# in all before the writer decides it alone (records.staging).
STAGING_ATTEMPTS = 3
_VERSION = re.compile(r"^2\.[2-8](\.\d+)?$")


@dataclass(frozen=True)
class Origin:
    """Where a message came from: the listener, the peer, and who vouches for the sender."""

    channel: str  # mllp | http | reprocess
    peer: str | None = None
    organization: str | None = None  # from a client certificate or an authenticated token


@dataclass
class Reply:
    ack: bytes | None  # None: the sender asked for no acknowledgment (enhanced mode)
    code: str | None
    outcome: str
    archive_id: str
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Settings:
    max_bytes: int = 4 * 1024 * 1024
    default_tz: str = "+08:00"
    sender_charsets: dict[str, str] = field(default_factory=dict)  # MSH-4 code -> codec


class Hl7Ingest:
    def __init__(
        self,
        records: RecordService,
        settings: Settings | None = None,
        committer: GroupCommitter | None = None,
        *,
        hold_reader: bool = False,
    ) -> None:
        self.records = records
        self.settings = settings or Settings()
        self._reader = db.reader(records.engine)  # made once: it costs about what a query does
        # Keep the snapshot's read-only connections between messages instead of taking one from
        # the pool (and putting it back) for each: for a worker process, which prepares one
        # message at a time and whose connections nobody else needs.
        self.hold_reader = hold_reader
        self._idle: list[Connection] = []
        self.committer = committer or GroupCommitter(
            records.engine, name="hl7-writer", observe=records.written
        )
        self._members: dict[str, str] = {}  # MSH-4 code -> Organization id, once seen registered
        # prepares messages in other processes for ``receive_async`` (``adapters.hl7v2.workers``);
        # None: in this one
        self.stager: Stager | None = None

    def close(self) -> None:
        self.committer.close()
        while self._idle:
            self._idle.pop().close()

    # -- the whole path --------------------------------------------------------------------

    def receive(self, raw: bytes, origin: Origin, *, archive_id: str | None = None) -> Reply:
        """The whole path in the calling thread (an operator's reprocess, the command line)."""
        for attempt in range(STAGING_ATTEMPTS):
            prepared = _attempt(self.prepare(raw, origin, archive_id), attempt)
            try:
                return self.finish(prepared)
            except StaleSnapshot:  # another message changed what this one read: again
                continue
        raise AssertionError("unreachable: the last attempt runs its fallback")

    async def receive_async(self, raw: bytes, origin: Origin, executor: Executor) -> Reply:
        """The whole path for a listener on an event loop (MLLP, HTTP). The message is prepared
        in a worker process (``stager``), else in ``executor``; the commit of its staged unit is
        awaited on the loop, with no thread waiting for it. The paths that write one at a time
        (refusals, a unit the writer decides alone) run in ``executor``."""
        loop = asyncio.get_running_loop()
        for attempt in range(STAGING_ATTEMPTS):
            prepared = await self.stager.prepare(raw, origin) if self.stager else None
            if prepared is None:  # no workers, or the one preparing it died
                prepared = await loop.run_in_executor(executor, self.prepare, raw, origin)
            _attempt(prepared, attempt)
            if prepared.refusal is not None or prepared.staged is None:
                return await loop.run_in_executor(executor, self.finish, prepared)
            try:
                # shielded: a connection that goes away leaves the unit to be committed
                committed = asyncio.wrap_future(self.committer.enqueue(self._job(prepared)))
                done = await asyncio.shield(committed)
            except StaleSnapshot:
                continue
            except (Hl7Error, FhirError) as exc:
                refuse = self._refuse_prepared
                return await loop.run_in_executor(executor, refuse, prepared, _refusal(exc))
            return self._settled(prepared, done)
        raise AssertionError("unreachable: the last attempt runs its fallback")

    def prepare(self, raw: bytes, origin: Origin, archive_id: str | None = None) -> Prepared:
        """Everything before the writer: parse, check the sender, translate, and stage the rows
        from a snapshot read. Needs no writing transaction, so any process can do it."""
        digest = content_digest(raw)
        header = _header_guess(raw)
        try:
            message = self._parse(raw, header)
            header = _header(message)
            organization = self._check_sender(message, origin)
            translation = self._translate(message, organization)
        except Hl7Error as refusal:
            return Prepared(raw, digest, header, origin, archive_id, refusal=_Refusal.of(refusal))
        prepared = Prepared(raw, digest, header, origin, archive_id, translation=translation)
        prepared.answer, prepared.archived, prepared.who = self._outcome(prepared, translation)
        if archive_id is None and not translation.merges:  # the usual case
            try:
                prepared.staged = self._stage(prepared, translation)
            except FhirError:  # the one-at-a-time path says so, after the check for a repeat
                prepared.staged = None
        return prepared

    def finish(self, prepared: Prepared) -> Reply:
        """Hand a prepared message to the writer; the reply once it is committed."""
        p = prepared
        if p.refusal is not None:
            return self._refuse_prepared(p, p.refusal.error())
        try:
            done = self.committer.submit(self._job(p))
        except (Hl7Error, FhirError) as exc:
            return self._refuse_prepared(p, _refusal(exc))
        return self._settled(p, done)

    def reprocess(self, archive_id: str, who: Principal) -> Reply | None:
        """Run an archived message through the ingest again (after a sender was registered
        or a mapping fixed); the archive row keeps its id and counts the attempt."""
        with self._reader.connect() as conn:
            found = inbound.get(conn, archive_id)
        if found is None or found.protocol != PROTOCOL or found.raw is None:
            return None
        self.records.audit(who, Event("hl7-reprocess", (f"inbound/{archive_id}",)))
        return self.receive(
            found.raw, Origin("reprocess", who.source, found.organization), archive_id=archive_id
        )

    def refuse_unreadable(self, raw: bytes, origin: Origin, reason: str) -> Reply:
        """Bytes the listener could not frame (junk, oversize, cut off): archive and AR."""
        refusal = Hl7Error(reason, Location("MSH"), "100", reject=True)
        digest = hashlib.sha256(raw).hexdigest()
        return self._refuse(raw, digest, _header_guess(raw), origin, refusal, None)

    def _parse(self, raw: bytes, header: ack.Header) -> Message:
        if len(raw) > self.settings.max_bytes:
            raise Hl7Error(
                f"message of {len(raw)} bytes exceeds the limit of {self.settings.max_bytes}",
                Location("MSH"),
                INTERNAL_ERROR,
                reject=True,
            )
        codec = self.settings.sender_charsets.get(header.sending_facility)
        message = parse(raw, default_codec=codec)
        msh = message.msh
        version = msh.value(12)
        if not _VERSION.match(version):
            raise Hl7Error(
                f"HL7 version '{version}' is not supported (2.2 to 2.8)",
                msh.where(12),
                UNSUPPORTED_VERSION,
                reject=True,
            )
        if msh.value(11) and msh.value(11)[0].upper() not in "PTD":
            raise Hl7Error(
                f"processing ID '{msh.value(11)}' is not P, T or D",
                msh.where(11),
                UNSUPPORTED_PROCESSING_ID,
                reject=True,
            )
        if not msh.value(10):
            raise Hl7Error(
                "MSH-10 (message control ID) is required", msh.where(10), "101", reject=True
            )
        kind = msh.value(9, 1).upper()
        if kind not in MAPPERS:
            raise Hl7Error(
                f"message type '{message.message_type}' is not supported; supported: "
                + ", ".join(sorted(MAPPERS)),
                msh.where(9, 1),
                UNSUPPORTED_MESSAGE_TYPE,
                reject=True,
            )
        return message

    def _check_sender(self, message: Message, origin: Origin) -> str:
        """The Organization (FHIR id) that sent the message, or a refusal."""
        facility = message.msh.value(4)
        if origin.organization:
            if facility and organization_id(facility) != origin.organization:
                raise Hl7Error(
                    f"MSH-4 '{facility}' does not match the sender's credentials "
                    f"(Organization/{origin.organization})",
                    message.msh.where(4),
                    UNKNOWN_KEY,
                    reject=True,
                )
            return origin.organization
        if not facility:
            raise Hl7Error(
                "MSH-4 (sending facility) is required to identify the clinic",
                message.msh.where(4),
                "101",
                reject=True,
            )
        known = self._members.get(facility)
        if known:
            return known
        with self._reader.connect() as conn:
            found = self.records.find_by_identifier(conn, "Organization", ORG_CODE_SYSTEM, facility)
        if not found:  # not remembered: a clinic registered a minute ago is found at once
            raise Hl7Error(
                f"sending facility '{facility}' is not a registered consortium member",
                message.msh.where(4),
                UNKNOWN_KEY,
                reject=True,
            )
        self._members[facility] = found[0].res_id
        return found[0].res_id

    @staticmethod
    def _repeat(conn: Connection, header: ack.Header, digest: str) -> Reply | None:
        """The same message again gets its first answer; the same control ID with other
        content is refused once something was stored under that ID. Runs in the writing
        transaction, so two copies arriving together cannot both be stored."""
        earlier = inbound.same_control_id(conn, PROTOCOL, _sender(header), header.control_id)
        for row in earlier:
            if row.content_hash == digest and row.outcome != inbound.FAILED:
                log.info(
                    "repeated message answered with its first ACK",
                    extra={"archive_id": row.id, "control_id": header.control_id[:40]},
                )
                return Reply(row.ack, row.ack_code, row.outcome, row.id, row.warnings, row.error)
        if any(row.outcome in inbound.STORED and row.content_hash != digest for row in earlier):
            raise Hl7Error(
                f"control ID '{header.control_id}' was already used for a different message",
                Location("MSH", 1, 10),
                DUPLICATE_KEY,
                reject=True,
            )
        return None

    def _translate(self, message: Message, organization: str) -> Translation:
        # MSH-4 names systems of the clinic's own numbers: keep it fit for a URN
        ctx = Context(urn_part(message.msh.value(4)), organization, self.settings.default_tz)
        translation = MAPPERS[message.msh.value(9, 1).upper()](message, ctx)
        sent = dtm(message.msh.value(7), message.msh.where(7), ctx.default_tz)  # read: mapped
        if translation.occurred is None:  # when the event happened: EVN if any, else MSH-7
            translation.occurred = sent
        if message.charset_warning:
            translation.warnings.insert(0, f"MSH-18: {message.charset_warning}")
        translation.warnings.extend(message.unmapped())
        return translation

    # -- outcomes --------------------------------------------------------------------------

    def _refuse(
        self,
        raw: bytes,
        digest: str,
        header: ack.Header,
        origin: Origin,
        refusal: Hl7Error,
        archive_id: str | None,
    ) -> Reply:
        code = ack.reply_code(header, ok=False, rejected=refusal.reject)
        issue = ack.Issue(refusal.text, refusal.where, refusal.code)
        reply = ack.build(header, code, [issue], text=refusal.text) if code else None
        log.info(
            "HL7 message refused",
            extra={
                "control_id": header.control_id[:40],
                "code": code,
                "hl7_error": refusal.code,
                "where": str(refusal.where or ""),
            },
        )
        target = archive_id or ids.new_id()

        def work(conn: Connection) -> None:
            inbound.record(
                conn,
                target,
                new=archive_id is None,
                **_archive_fields(raw, digest, header, origin),
                outcome=inbound.REJECTED,
                ack_code=code,
                ack=reply,
                error=str(refusal),
                warnings=[],
                resources=[],
                patient_id=None,
            )
            who = _principal(header, origin, None)
            audit_log.append(
                conn,
                who,
                Event("hl7-ingest", (f"inbound/{target}",), (), "refused", str(refusal)[:300]),
            )

        self.committer.submit(work)
        return Reply(reply, code, inbound.REJECTED, target, error=str(refusal))

    def _outcome(
        self, p: Prepared, translation: Translation
    ) -> tuple[Reply, dict[str, Any], Principal]:
        """The reply and archive row of an accepted message, and who the sender acts as."""
        warnings = translation.warnings
        outcome = inbound.WARNINGS if warnings else inbound.ACCEPTED
        code = ack.reply_code(p.header, ok=True, rejected=False)
        issues = [ack.Issue(w, None, "0", "W") for w in warnings[:20]]
        reply = ack.build(p.header, code, issues) if code else None
        organization = translation_org(translation, p.origin)
        who = _principal(p.header, p.origin, organization)
        answer = Reply(reply, code, outcome, p.archive_id or ids.new_id(), warnings)
        archived = {
            **_archive_fields(p.raw, p.digest, p.header, p.origin),
            "organization": organization,
            "outcome": outcome,
            "ack_code": code,
            "ack": reply,
            "warnings": warnings,
            "error": None,
        }
        return answer, archived, who

    def _refuse_prepared(self, p: Prepared, refusal: Hl7Error) -> Reply:
        return self._refuse(p.raw, p.digest, p.header, p.origin, refusal, p.archive_id)

    def _job(self, p: Prepared) -> Callable[[Connection], Reply] | Staged[Reply]:
        """What the writer runs for an accepted message: its staged unit, with the
        one-at-a-time path as its fallback (or that path alone when nothing was staged)."""
        assert p.answer is not None and p.archived is not None and p.who is not None
        answer, archived, who, header = p.answer, p.archived, p.who, p.header

        def work(conn: Connection) -> Reply:
            if p.archive_id is None:  # an operator's reprocess is never a repeat
                repeat = self._repeat(conn, header, p.digest)
                if repeat is not None:
                    return repeat
            translation = self._translation(p)
            written = apply(self.records, conn, who, translation, answer.archive_id, header)
            row = {**archived, "warnings": translation.warnings, **_produced(written)}
            inbound.record(conn, answer.archive_id, new=p.archive_id is None, **row)
            touched = [(f"{s.res_type}/{s.res_id}", s.patient_id) for s in written]
            audit_log.append(conn, who, Event.touching("hl7-ingest", touched))
            return answer

        if p.staged is None:
            return work
        p.staged.fallback = work
        return p.staged

    @staticmethod
    def _settled(p: Prepared, done: Reply) -> Reply:
        """The committed message's reply (a repeat's is its first one), logged."""
        assert p.answer is not None
        if done.archive_id == p.answer.archive_id:
            log.info(
                "HL7 message accepted",
                extra={
                    "archive_id": done.archive_id,
                    "type": p.header.event,
                    "warnings": len(done.warnings),
                },
            )
        return done

    def _translation(self, p: Prepared) -> Translation:
        """The message's translation: the one made when prepared here, else made again."""
        if p.translation is None:
            message = self._parse(p.raw, p.header)
            p.translation = self._translate(message, self._check_sender(message, p.origin))
        return p.translation

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A read-only connection for one message's snapshot (a transaction of its own);
        with ``hold_reader`` one kept from an earlier message, and kept again after."""
        if not self.hold_reader:
            with self._reader.connect() as conn:
                yield conn
            return
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._reader.connect()
        try:
            yield conn
            conn.rollback()  # read only: ends the transaction, and SQLite's snapshot with it
        except BaseException:
            conn.close()  # whatever went wrong, the next message takes a fresh connection
            raise
        self._idle.append(conn)

    def _stage(self, p: Prepared, translation: Translation) -> Staged[Reply] | None:
        """The message's rows decided from a snapshot, outside the writing transaction; the
        writer checks that snapshot still holds (``records.staging``), else runs the
        one-at-a-time path."""
        try:
            return self._stage_once(p, translation)
        except DBAPIError as exc:
            if not (self.hold_reader and exc.connection_invalidated):
                raise
            # a kept connection the server closed meanwhile (the pool's pre-ping would have
            # caught it): staging reads only, so it is done again on a new one
            return self._stage_once(p, translation)

    def _stage_once(self, p: Prepared, translation: Translation) -> Staged[Reply] | None:
        assert p.answer is not None and p.archived is not None and p.who is not None
        answer, who = p.answer, p.who
        with self._snapshot() as conn:
            planned = plan(self.records, conn, translation)
            writes = planned.writes
            if writes:
                writes.append(
                    _provenance_write(writes, answer.archive_id, p.header, translation, who)
                )
            existing = {(s.res_type, s.res_id): s for s in planned.found.values()}
            rows = self.records.stage_batch(conn, who, writes, existing, planned.holders)
            if rows is None:
                return None
            rows.bind(conn.dialect)  # the writer's process only sends them
            keys = set(planned.keys)
            found = dict(planned.found)
            # a resident identity number stays unique: expect who holds it now
            unique = {k for k in rows.identifiers() if k[:2] == ("Patient", RESIDENT_ID_SYSTEM)}
            if unique - keys:
                found.update(self.records.find_by_identifiers(conn, list(unique - keys)))
                keys |= unique
        touched = [(f"{s.res_type}/{s.res_id}", s.patient_id) for s in rows.written]
        return Staged(
            result=answer,
            rows=rows,
            expect={k: (found[k].res_id, found[k].version) if k in found else None for k in keys},
            control=(PROTOCOL, _sender(p.header), p.header.control_id),
            archive=inbound.new_row(answer.archive_id, **p.archived, **_produced(rows.written)),
            audit=[(who, Event.touching("hl7-ingest", touched))],
        )


def content_digest(raw: bytes) -> str:
    """What makes two messages the same content: their segments, however they were ended (a
    sender's LF or CR LF instead of CR, a missing last CR). A message ended the standard way
    hashes as its bytes do."""
    return hashlib.sha256(b"".join(segment + b"\r" for segment in split_frame(raw))).hexdigest()


class Stager(Protocol):
    """Prepares messages elsewhere (``adapters.hl7v2.workers.StagingPool``)."""

    async def prepare(self, raw: bytes, origin: Origin) -> Prepared | None:
        """The message prepared, or None when it could not be (prepare it here instead)."""
        ...


def _attempt(prepared: Prepared, attempt: int) -> Prepared:
    """Number ``attempt`` (from 0) of a message: the last is decided in the writer alone."""
    if prepared.staged is not None:
        prepared.staged.retry = attempt + 1 < STAGING_ATTEMPTS
    return prepared


def _refusal(exc: Hl7Error | FhirError) -> Hl7Error:
    """A refusal met while writing; what the mapping built but FHIR does not allow is named."""
    if isinstance(exc, FhirError):
        return Hl7Error(f"the translated resources were refused: {exc.diagnostics}", None, "207")
    return exc


@dataclass
class _Refusal:
    """An ``Hl7Error`` as plain data (exceptions with extra fields do not survive pickling)."""

    text: str
    where: Location | None
    code: str
    reject: bool

    @classmethod
    def of(cls, error: Hl7Error) -> _Refusal:
        return cls(error.text, error.where, error.code, error.reject)

    def error(self) -> Hl7Error:
        return Hl7Error(self.text, self.where, self.code, reject=self.reject)


@dataclass
class Prepared:
    """A message made ready for the writer (``Hl7Ingest.prepare``). It pickles, so a worker
    process can prepare it; the translation stays behind and is made again if needed."""

    raw: bytes
    digest: str
    header: ack.Header
    origin: Origin
    archive_id: str | None  # the archive row an operator's reprocess works on
    refusal: _Refusal | None = None
    answer: Reply | None = None
    archived: dict[str, Any] | None = None
    who: Principal | None = None
    staged: Staged[Reply] | None = None
    translation: Translation | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Sent back from a worker without the translation and without the raw message (the
        gateway's process has it: ``with_raw``), which would otherwise travel three times."""
        state = {**self.__dict__, "translation": None, "raw": b""}
        if self.archived is not None:
            state["archived"] = {**self.archived, "raw": b""}
        if self.staged is not None and self.staged.archive is not None:
            staged = copy.copy(self.staged)
            staged.archive = {**self.staged.archive, "raw": b""}
            state["staged"] = staged
        return state

    def with_raw(self, raw: bytes) -> Prepared:
        self.raw = raw
        if self.archived is not None:
            self.archived["raw"] = raw
        if self.staged is not None and self.staged.archive is not None:
            self.staged.archive["raw"] = raw
        return self


def translation_org(translation: Translation, origin: Origin) -> str | None:
    managing = next(
        (e.body.get("managingOrganization") for e in translation.entries if e.rtype == "Patient"),
        None,
    )
    if managing:
        return str(managing["reference"]).split("/", 1)[1]
    return origin.organization


# -- applying a translation ----------------------------------------------------------------------


@dataclass
class Plan:
    """What applying a translation writes, decided from what ``conn`` shows."""

    writes: list[tuple[str, str, dict[str, Any], bool]]  # (type, id, body, new)
    found: dict[tuple[str, str, str], Stored]  # existing resources by identifier key
    keys: list[tuple[str, str, str]]  # every key looked up
    resolved: dict[str, str]  # entry key -> "Type/id"
    holders: dict[tuple[str, str, str], set[str]]  # key -> ids of every live resource with it


def plan(records: RecordService, conn: Connection, translation: Translation) -> Plan:
    """Existing resources are found by identifier in one query and every entry gets its id
    before anything is written, so references resolve in one pass; an entry that would not
    change what the record says is left out."""
    keys = [(e.rtype, system, value) for e in translation.entries for system, value in e.match]
    holders: dict[tuple[str, str, str], set[str]] = {}
    existing = records.find_by_identifiers(conn, keys, holders)
    resolved: dict[str, str] = {}
    chosen: list[tuple[str, str, dict[str, Any], bool, dict[str, Any] | None, bool]] = []
    for entry in translation.entries:
        found = next(
            (
                existing[(entry.rtype, s, v)]
                for s, v in entry.match
                if (entry.rtype, s, v) in existing
            ),
            None,
        )
        rid = found.res_id if found else ids.new_id()
        resolved[entry.key] = f"{entry.rtype}/{rid}"
        if found is not None and entry.create_only_if_new:
            continue
        old = found.json() if found else None
        chosen.append((entry.rtype, rid, entry.body, found is None, old, entry.keep_identifiers))
    writes = []
    for rtype, rid, body, new, old, keep in chosen:
        body = _resolve(body, resolved)
        if old is not None:
            body = _merge_into(old, body, keep)
            if body == {k: v for k, v in old.items() if k not in ("meta", "id")}:
                continue  # the message says what the record already says: no new version
        writes.append((rtype, rid, body, new))
    return Plan(writes, existing, keys, resolved, holders)


def apply(
    records: RecordService,
    conn: Connection,
    who: Principal,
    translation: Translation,
    archive_id: str,
    header: ack.Header,
) -> list[Stored]:
    """Write a translation inside the transaction (``plan``, then all versions, index rows and
    the Provenance with one statement per table)."""
    planned = plan(records, conn, translation)
    writes = planned.writes
    # our own translations: the R4 schema check, not the 1 ms-a-resource model validation
    if writes and not translation.merges:  # the usual case: Provenance in the same statements
        writes.append(_provenance_write(writes, archive_id, header, translation, who))
        return records.write_batch(conn, who, writes, models=False)
    written = records.write_batch(conn, who, writes, models=False) if writes else []
    for merge in translation.merges:
        source = _find(records, conn, "Patient", merge.source)
        target = planned.resolved[merge.target_key].split("/", 1)[1]
        if source is None:
            translation.warnings.append("MRG-1: no patient with these identifiers; nothing merged")
            continue
        if source.res_id != target:
            merged, _moved = records.merge_in(conn, who, source.res_id, target)
            written.append(merged)
    if written:
        refs: list[tuple[str, str, dict[str, Any], bool]] = [
            (s.res_type, s.res_id, {}, True) for s in written
        ]
        provenance = _provenance_write(refs, archive_id, header, translation, who)
        written += records.write_batch(conn, who, [provenance], models=False)
    return written


def _provenance_write(
    writes: list[tuple[str, str, dict[str, Any], bool]],
    archive_id: str,
    header: ack.Header,
    translation: Translation,
    who: Principal,
) -> tuple[str, str, dict[str, Any], bool]:
    refs = [f"{rtype}/{rid}" for rtype, rid, _, _ in writes]
    return (
        "Provenance",
        ids.new_id(),
        _provenance(refs, archive_id, header, translation, who),
        True,
    )


def _find(
    records: RecordService, conn: Connection, rtype: str, match: list[tuple[str, str]]
) -> Stored | None:
    found = records.find_by_identifiers(conn, [(rtype, s, v) for s, v in match])
    return next((found[(rtype, s, v)] for s, v in match if (rtype, s, v) in found), None)


def _merge_into(old: dict[str, Any], new: dict[str, Any], keep_identifiers: bool) -> dict[str, Any]:
    """What the message says replaces what the record had, element by element; elements the
    message does not carry are kept (an A08 without an address does not erase the address)."""
    merged = {k: v for k, v in old.items() if k not in ("meta", "id")}
    merged.update(new)
    if keep_identifiers:
        have = {(i.get("system"), i.get("value")) for i in new.get("identifier", [])}
        merged["identifier"] = new.get("identifier", []) + [
            i for i in old.get("identifier", []) if (i.get("system"), i.get("value")) not in have
        ]
    return merged


def _resolve(node: Any, resolved: dict[str, str]) -> Any:
    """Replace references to entries of the translation ("urn:uuid:<key>") by their ids.
    The translation stays as it was, for the one-at-a-time path: a dict or list holding such a
    reference, however deep, is a copy; one without any is the translation's own (nothing
    after planning changes a body in place: it is merged, completed and stored as copies)."""
    if isinstance(node, dict):
        out = None
        for k, v in node.items():  # leaves are most of the nodes: no call for them
            if isinstance(v, (dict, list)):
                new = _resolve(v, resolved)
                if new is not v:
                    if out is None:
                        out = dict(node)
                    out[k] = new
        ref = node.get("reference")
        if isinstance(ref, str) and ref.startswith("urn:uuid:") and ref[9:] in resolved:
            if out is None:
                out = dict(node)
            out["reference"] = resolved[ref[9:]]
        return node if out is None else out
    if isinstance(node, list):
        items = None
        for i, v in enumerate(node):
            if isinstance(v, (dict, list)):
                new = _resolve(v, resolved)
                if new is not v:
                    if items is None:
                        items = list(node)
                    items[i] = new
        return node if items is None else items
    return node


def _provenance(
    targets: list[str],
    archive_id: str,
    header: ack.Header,
    translation: Translation,
    who: Principal,
) -> dict[str, Any]:
    return ingest_provenance(
        targets,
        organization=who.organization,
        sender=header.sending_facility or "unknown sender",
        source={
            "identifier": {"system": "urn:yilian:inbound", "value": archive_id},
            "display": f"HL7 v2 {header.event} {header.control_id}"[:200],
        },
        occurred=translation.occurred,
    )


# -- helpers -------------------------------------------------------------------------------------


def _produced(written: list[Stored]) -> dict[str, Any]:
    return {
        "resources": [f"{s.res_type}/{s.res_id}" for s in written],
        "patient_id": next((s.res_id for s in written if s.res_type == "Patient"), None),
    }


def _sender(header: ack.Header) -> str:
    return f"{header.sending_app}|{header.sending_facility}"


def _archive_fields(raw: bytes, digest: str, header: ack.Header, origin: Origin) -> dict[str, Any]:
    return {
        "protocol": PROTOCOL,
        "origin": origin.channel,
        "sender": _sender(header),
        "control_id": header.control_id or None,
        "content_hash": digest,
        "message_type": header.event or None,
        "version": header.version or None,
        "charset": header.charset or None,
        "raw": raw,
    }


def _principal(header: ack.Header, origin: Origin, organization: str | None) -> Principal:
    name = f"hl7:{header.sending_app or '?'}@{header.sending_facility or '?'}"
    return Principal(
        username=name[:128],
        role=Role.SYSTEM,
        organization=organization or origin.organization,
        source=origin.peer,
    )


def _header(message: Message) -> ack.Header:
    msh = message.msh
    return ack.Header(
        sending_app=msh.value(3),
        sending_facility=msh.value(4),
        receiving_app=msh.value(5),
        receiving_facility=msh.value(6),
        control_id=msh.value(10),
        processing_id=msh.value(11) or "P",
        version=msh.value(12),
        event=message.message_type,
        accept_ack=msh.value(15),
        application_ack=msh.value(16),
        charset=msh.raw(18).split(message.seps[2])[0],
        codec=message.codec,
    )


def _header_guess(raw: bytes) -> ack.Header:
    """Best effort when the message cannot be parsed: read MSH as Latin-1 for the ACK."""
    first = raw.replace(b"\n", b"\r").split(b"\r", 1)[0].lstrip()
    if not first.startswith(b"MSH") or len(first) < 8:
        return ack.Header()
    text = first.decode("latin-1")
    sep, comp = text[3], text[4]
    fields = text.split(sep)

    seps = text[3:8]

    def f(n: int) -> str:
        value = fields[n - 1] if n - 1 < len(fields) else ""
        return unescape(value, seps) if value.isascii() and len(seps) == 5 else ""

    return ack.Header(
        sending_app=f(3).split(comp)[0],
        sending_facility=f(4).split(comp)[0],
        receiving_facility=f(6).split(comp)[0],
        control_id=f(10)[:199],
        processing_id=f(11)[:3] or "P",
        version=f(12).split(comp)[0] if _VERSION.match(f(12).split(comp)[0]) else "2.5.1",
        event="^".join(f(9).split(comp)[:2]),
        accept_ack=f(15)[:2],
        application_ack=f(16)[:2],
        charset="",
        codec="utf-8",
    )
