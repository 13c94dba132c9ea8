"""The archive of inbound messages and objects with their outcomes (DESIGN.md rule 3).

Rows are written in the same unit of work as what the message produced, so an accepted
message and its resources commit together; a refused or failed one is archived on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from records import bulk, fhirdates
from records.schema import inbound_message

ACCEPTED = "accepted"
WARNINGS = "accepted-with-warnings"
REJECTED = "rejected"
FAILED = "failed"
STORED = {ACCEPTED, WARNINGS}  # outcomes where something reached the record


@dataclass(frozen=True)
class Archived:
    id: str
    protocol: str
    origin: str
    received: datetime
    sender: str | None
    organization: str | None
    control_id: str | None
    content_hash: str
    message_type: str | None
    version: str | None
    charset: str | None
    outcome: str
    ack_code: str | None
    ack: bytes | None
    warnings: list[str]
    error: str | None
    resources: list[str]
    patient_id: str | None
    attempts: int
    raw: bytes | None = None


_SUMMARY = [c for c in inbound_message.c if c.name != "raw"]
_SAME_CONTROL_ID = (
    select(*_SUMMARY)
    .where(
        inbound_message.c.protocol == bindparam("protocol"),
        inbound_message.c.sender == bindparam("sender"),
        inbound_message.c.control_id == bindparam("control_id"),
    )
    .order_by(inbound_message.c.received)
)


def _archived(row: Any, with_raw: bool) -> Archived:
    return Archived(
        id=row.id,
        protocol=row.protocol,
        origin=row.origin,
        received=fhirdates.as_utc(row.received),
        sender=row.sender,
        organization=row.organization,
        control_id=row.control_id,
        content_hash=row.content_hash,
        message_type=row.message_type,
        version=row.version,
        charset=row.charset,
        outcome=row.outcome,
        ack_code=row.ack_code,
        ack=row.ack,
        warnings=json.loads(row.warnings),
        error=row.error,
        resources=json.loads(row.resources),
        patient_id=row.patient_id,
        attempts=row.attempts,
        raw=row.raw if with_raw else None,
    )


def _json_fields(values: dict[str, Any]) -> dict[str, Any]:
    for key in ("warnings", "resources"):
        if key in values and not isinstance(values[key], str):
            values[key] = json.dumps(values[key], ensure_ascii=False)
    return values


def insert_row(conn: Connection, archive_id: str, **values: Any) -> str:
    insert_rows(conn, [new_row(archive_id, **values)])
    return archive_id


def new_row(archive_id: str, **values: Any) -> dict[str, Any]:
    """The archive row of a first attempt, to write with ``insert_rows``."""
    now = fhirdates.now()
    return {
        "warnings": "[]",
        "resources": "[]",
        **_json_fields(values),
        "id": archive_id,
        "received": now,
        "updated": now,
        "attempts": 1,
    }


def insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    bulk.insert_rows(conn, inbound_message, rows)


def control_ids_seen(
    conn: Connection, keys: set[tuple[str, str, str]]
) -> set[tuple[str, str, str]]:
    """Which (protocol, sender, control ID) already have an archive row (plain SQL: the
    writer asks for every batch)."""
    if not keys:
        return set()
    m = bulk.mark(conn)
    one = f"(protocol = {m} AND sender = {m} AND control_id = {m})"
    sql = "SELECT protocol, sender, control_id FROM inbound_message WHERE " + " OR ".join(
        [one] * len(keys)
    )
    rows = conn.exec_driver_sql(sql, tuple(v for key in sorted(keys) for v in key))
    return {(p, s, c) for p, s, c in rows} & keys


def update_row(conn: Connection, archive_id: str, **values: Any) -> str:
    """A new attempt at an archived message (an operator's reprocess): new outcome, same row."""
    values.pop("raw", None)
    conn.execute(
        update(inbound_message)
        .where(inbound_message.c.id == archive_id)
        .values(
            updated=fhirdates.now(), attempts=inbound_message.c.attempts + 1, **_json_fields(values)
        )
    )
    return archive_id


def record(conn: Connection, archive_id: str, *, new: bool, **values: Any) -> str:
    return (insert_row if new else update_row)(conn, archive_id, **values)


def same_control_id(
    conn: Connection, protocol: str, sender: str, control_id: str
) -> list[Archived]:
    rows = conn.execute(
        _SAME_CONTROL_ID, {"protocol": protocol, "sender": sender, "control_id": control_id}
    )
    return [_archived(r, False) for r in rows]


def get(conn: Connection, archive_id: str) -> Archived | None:
    row = conn.execute(select(inbound_message).where(inbound_message.c.id == archive_id)).first()
    return _archived(row, True) if row else None


def listing(
    conn: Connection,
    *,
    protocol: str | None = None,
    outcome: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[Archived]]:
    query = select(*_SUMMARY)
    count = select(func.count()).select_from(inbound_message)
    for column, value in (
        (inbound_message.c.protocol, protocol),
        (inbound_message.c.outcome, outcome),
    ):
        if value:
            query = query.where(column == value)
            count = count.where(column == value)
    rows = conn.execute(
        query.order_by(inbound_message.c.received.desc()).limit(limit).offset(offset)
    )
    return conn.execute(count).scalar_one(), [_archived(r, False) for r in rows]
