"""Units of work prepared outside the writing transaction, written many to a statement.

An ingest unit spends most of its time in Python (mapping, validation, index rows, JSON). Done
inside the writing transaction, that time holds the database's write lock and keeps the writer
thread busy; done before, from a snapshot read, it runs beside other units and the writer only
checks the snapshot still holds and writes rows. A ``Staged`` unit says what it read (each
identifier key, the resource it found there and that resource's version, or nothing) and what to
write (resource rows, an archive row, audit events). The writer takes a group of them:

1. one query reads every key the group expects; a unit is *stale* when a key now gives another
   answer, when an earlier unit of the group writes a resource or identifier it read, when
   its control ID was seen before (a repeat, or the same ID with other content), or when a
   primary key it claims (a DICOM SOP Instance UID) is taken;
2. the units before the first stale one are written together, one statement per table, and
   each unit's ``ready`` is waited for before the commit (a DICOM object made durable);
3. a stale unit fails with ``StaleSnapshot`` when its caller can prepare it again from a new
   snapshot (``retry``: cheaper where preparing runs in other processes), else it runs its
   ``fallback`` (the one-at-a-time path, which reads and decides again inside the
   transaction); the rest of the group is checked again.

If writing a group fails, each of its units runs its fallback instead, one by one, so one bad
unit never costs the others. The result of a unit is the same whichever path wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection

from records import audit_log, bulk, db, identity, inbound, store
from records.audit_log import Event
from records.schema import metadata
from security.principal import Principal

T = TypeVar("T")


class StaleSnapshot(Exception):
    """What a staged unit read has changed before it could be written: prepare it again."""


Key = tuple[str, str, str]  # (resource type, identifier system, value)
RESIDENT_ID = ("Patient", identity.RESIDENT_ID_SYSTEM)


@dataclass
class Staged(Generic[T]):
    result: T  # what the caller gets once the unit is committed by the group path
    # the same unit deciding everything inside the transaction (set by the writer's caller:
    # a staged unit may come from another process, a function cannot)
    fallback: Callable[[Connection], T] | None = None
    rows: store.Rows = field(default_factory=store.Rows)
    # identifier key -> (resource id, version) found in the snapshot, or None: nothing there
    expect: dict[Key, tuple[str, int] | None] = field(default_factory=dict)
    control: tuple[str, str, str] | None = None  # (protocol, sender, control ID) never seen
    archive: dict[str, Any] | None = None  # an inbound_message row to insert
    audit: list[tuple[Principal, Event]] = field(default_factory=list)
    retry: bool = False  # stale: raise StaleSnapshot instead of running the fallback
    # rows of other tables (by table name) written with the unit: a DICOM index row
    extra: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    claims: list[tuple[str, str]] = field(default_factory=list)  # (table, primary key) free
    # waited for once the rows are written, before the commit; what it raises fails the group
    # (each unit then runs its fallback)
    ready: Callable[[], Any] | None = None

    def writes(self) -> tuple[set[Key], set[str]]:
        """The identifier keys and resource ids ("Type/id") this unit writes."""
        return self.rows.identifiers(), {f"{s.res_type}/{s.res_id}" for s in self.rows.written}

    def reads(self) -> tuple[set[Key], set[str]]:
        return set(self.expect), {f"{k[0]}/{v[0]}" for k, v in self.expect.items() if v}


def holding(conn: Connection, units: list[Staged[Any]]) -> int:
    """How many leading units of ``units`` still hold (see the module's rule 1)."""
    keys = {k for u in units for k in u.expect}
    # take turns with other writers deciding whether a resident identity number is free
    db.lock_keys(conn, [identity.lock_key(k[2]) for k in keys if k[:2] == RESIDENT_ID])
    now = store.versions_by_identifiers(conn, keys)
    controls = {u.control for u in units if u.control}
    seen = inbound.control_ids_seen(conn, controls)
    taken = _taken(conn, {c for u in units for c in u.claims})
    written_keys: set[Key] = set()
    written_ids: set[str] = set()
    for n, unit in enumerate(units):
        keys_read, ids_read = unit.reads()
        if keys_read & written_keys or ids_read & written_ids:
            return n
        for key, expected in unit.expect.items():
            if now.get(key) != expected:
                return n
        if unit.control and unit.control in seen:
            return n
        if taken.intersection(unit.claims):
            return n
        if unit.control:
            seen.add(unit.control)
        taken.update(unit.claims)
        keys_written, ids_written = unit.writes()
        written_keys |= keys_written
        written_ids |= ids_written
    return len(units)


def write(conn: Connection, units: list[Staged[Any]]) -> None:
    """Write the units' rows together, one statement per table, archive and audit included."""
    rows = store.Rows()
    for unit in units:
        rows.extend(unit.rows)
    store.flush(conn, rows)
    inbound.insert_rows(conn, [u.archive for u in units if u.archive])
    extra: dict[str, list[dict[str, Any]]] = {}
    for unit in units:
        for table, table_rows in unit.extra.items():
            extra.setdefault(table, []).extend(table_rows)
    for table, table_rows in extra.items():
        bulk.insert_rows(conn, metadata.tables[table], table_rows)
    events = [event for u in units for event in u.audit]
    if events:
        audit_log.append_many(conn, events)
    for unit in units:
        if unit.ready is not None:
            unit.ready()


def _taken(conn: Connection, claims: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (table, primary key) already have a row: one query per table."""
    by_table: dict[str, list[str]] = {}
    for table, key in claims:
        by_table.setdefault(table, []).append(key)
    out: set[tuple[str, str]] = set()
    for name, keys in by_table.items():
        (column,) = metadata.tables[name].primary_key.columns
        marks = ", ".join([bulk.mark(conn)] * len(keys))
        sql = f"SELECT {column.name} FROM {name} WHERE {column.name} IN ({marks})"
        out |= {(name, str(row[0])) for row in bulk.fetch_all(conn, sql, tuple(keys))}
    return out
