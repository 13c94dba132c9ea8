"""Storage of the audit chain (the rule itself is ``security.audit``) and its FHIR view.

``append`` runs inside the caller's unit of work, so an audit record commits with the change it
describes or not at all. Appenders take the single ``audit_head`` row ``FOR UPDATE``: on
PostgreSQL concurrent transactions queue there for the short moment before commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from records import bulk, fhirdates
from records.schema import audit_head, audit_record
from security.audit import AuditEntry, ChainBreak, chain_hash, verify_chain
from security.principal import Principal


@dataclass(frozen=True)
class Event:
    """What happened, as the records boundary reports it."""

    action: str  # read, vread, search, create, update, delete, history, login, operation name
    resources: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()
    outcome: str = "success"  # success | refused | failed
    detail: str | None = None
    # (resource, its patient) when one operation touched several patients' records: each
    # patient's audit record then names only that patient's resources.
    touched: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def touching(cls, action: str, pairs: Iterable[tuple[str, str | None]]) -> Event:
        return cls(action, touched=tuple(pairs))

    def per_patient(self) -> list[tuple[str | None, tuple[str, ...]]]:
        if not self.touched:
            return [(p, self.resources) for p in self.patients or (None,)]
        groups: dict[str | None, list[str]] = {}
        for ref, patient in self.touched:
            groups.setdefault(patient, []).append(ref)
        return [(p, tuple(refs)) for p, refs in groups.items()]


def append(conn: Connection, who: Principal, event: Event) -> int:
    """Write one record per patient touched (one with no patient if none); return the last seq."""
    return append_many(conn, [(who, event)])


def append_many(conn: Connection, events: list[tuple[Principal, Event]]) -> int:
    """``append`` for several events in order, with one move of the chain's head.

    The head this connection moved last is remembered with it: the move says which head it
    expects, and only when another writer moved it since (or the transaction that moved it
    rolled back) is it read again and the records made anew. The ingest's writer, alone on its
    connection, saves a statement a batch."""
    info = conn.connection.info
    head: tuple[int, str] | None = info.get(_HEAD)
    if head is not None:
        seq = _append_at(conn, events, head)
        if seq is not None:
            return seq
    lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""  # SQLite's writer is alone
    [(seq, prev)] = bulk.fetch_all(conn, f"SELECT seq, hash FROM audit_head WHERE id = 1{lock}", ())
    moved = _append_at(conn, events, (int(seq), str(prev)))
    assert moved is not None, "the head read in this transaction moved under it"
    return moved


_HEAD = "yilian_audit_head"  # key of the DB-API connection's info: (seq, hash) it moved it to


def _append_at(
    conn: Connection, events: list[tuple[Principal, Event]], head: tuple[int, str]
) -> int | None:
    """Write ``events`` after ``head``; None (nothing written) when the head is not there."""
    seq, prev = head
    recorded = fhirdates.now()
    rows = []
    for who, event in events:
        for patient, resources in event.per_patient() or [(None, ())]:
            seq += 1
            entry = AuditEntry(
                seq=seq,
                recorded=recorded,
                actor=who.username,
                role=who.role.value,
                organization=who.organization,
                action=event.action,
                resources=tuple(resources[:200]),
                patient=patient,
                outcome=event.outcome,
                detail=(event.detail or None) and event.detail[:500],
                source=who.source,
            )
            digest = chain_hash(prev, entry)
            rows.append(_row(entry, prev, digest))
            prev = digest
    mark = bulk.mark(conn)
    sql = (
        f"UPDATE audit_head SET seq = {mark}, hash = {mark} "
        f"WHERE id = 1 AND seq = {mark} AND hash = {mark}"
    )
    if bulk.execute(conn, sql, (seq, prev, *head)) != 1:
        conn.connection.info.pop(_HEAD, None)
        return None
    bulk.insert_rows(conn, audit_record, rows)
    conn.connection.info[_HEAD] = (seq, prev)
    return seq


def _row(entry: AuditEntry, prev: str, digest: str) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "recorded": entry.recorded,
        "actor": entry.actor,
        "role": entry.role,
        "organization": entry.organization,
        "action": entry.action,
        "resources": json.dumps(list(entry.resources)),
        "patient": entry.patient,
        "outcome": entry.outcome,
        "detail": entry.detail,
        "source": entry.source,
        "prev_hash": prev,
        "hash": digest,
    }


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        recorded=fhirdates.as_utc(row.recorded),
        actor=row.actor,
        role=row.role,
        organization=row.organization,
        action=row.action,
        resources=tuple(json.loads(row.resources)),
        patient=row.patient,
        outcome=row.outcome,
        detail=row.detail,
        source=row.source,
    )


def verify(conn: Connection) -> tuple[int, ChainBreak | None]:
    """(number of records checked, first break or None)."""
    head = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).first()
    count = 0

    def rows() -> Iterator[tuple[AuditEntry, str, str]]:
        nonlocal count
        result = conn.execution_options(yield_per=2000).execute(
            select(audit_record).order_by(audit_record.c.seq)
        )
        for row in result:
            count += 1
            yield _entry(row), row.prev_hash, row.hash

    broken = verify_chain(rows(), (head.seq, head.hash) if head else None)
    return count, broken


# -- the FHIR view -------------------------------------------------------------------------------

_ACTION_CODE = {"create": "C", "read": "R", "vread": "R", "update": "U", "delete": "D"}
_OUTCOME_CODE = {"success": "0", "refused": "4", "failed": "8"}


def as_audit_event(row: Any) -> dict[str, Any]:
    entry = _entry(row)
    login = entry.action == "login"
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(entry.seq),
        "meta": {"versionId": "1", "lastUpdated": fhirdates.instant(entry.recorded)},
        "type": (
            {
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "110114",
                "display": "User Authentication",
            }
            if login
            else {
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest",
                "display": "RESTful Operation",
            }
        ),
        "subtype": [
            {
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "110122",
                "display": "Login",
            }
            if login
            else {"system": "http://hl7.org/fhir/restful-interaction", "code": entry.action}
        ],
        "action": _ACTION_CODE.get(entry.action, "E"),
        "recorded": fhirdates.instant(entry.recorded),
        "outcome": _OUTCOME_CODE.get(entry.outcome, "8"),
        "agent": [
            {
                "type": {"text": entry.role},
                "who": {
                    "identifier": {"system": "urn:yilian:user", "value": entry.actor},
                    "display": entry.actor,
                },
                "requestor": True,
                **(
                    {"network": {"address": entry.source[:100], "type": "2"}}
                    if entry.source
                    else {}
                ),
            }
        ],
        "source": {"site": "yilian", "observer": {"display": "Yilian gateway"}},
    }
    if entry.detail:
        event["outcomeDesc"] = entry.detail
    if entry.organization:
        event["agent"].append(
            {
                "type": {"text": "organization"},
                "who": {"reference": f"Organization/{entry.organization}"},
                "requestor": False,
            }
        )
    entities = [_entity(ref) for ref in entry.resources if "/" in ref or ref.startswith("urn:")]
    if entry.patient:
        entities.insert(
            0,
            {
                "what": {"reference": f"Patient/{entry.patient}"},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                    "display": "Person",
                },
            },
        )
    if entities:
        event["entity"] = entities
    return event


def _entity(ref: str) -> dict[str, Any]:
    """A resource reference, or an object known by identifier only (``urn:oid:`` of a DICOM
    study, series or instance)."""
    if ref.startswith("urn:"):
        return {"what": {"identifier": {"system": "urn:dicom:uid", "value": ref}}}
    return {"what": {"reference": ref}}
