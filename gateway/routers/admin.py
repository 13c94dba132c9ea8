"""Operator API: the archive of inbound messages (read, reprocess). Admins only; every access
is audited, since archived messages hold patient data."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from gateway.deps import ContextDep, PrincipalDep
from records import inbound
from records.audit_log import Event
from records.db import reader
from records.errors import Forbidden, NotFound
from security.principal import Principal, Role

router = APIRouter(prefix="/admin", tags=["operators"])


def _admin(who: Principal) -> None:
    if who.role not in (Role.ADMIN, Role.SYSTEM):
        raise Forbidden("the message archive is for administrators")


def summary(row: inbound.Archived) -> dict[str, Any]:
    return {
        "id": row.id,
        "protocol": row.protocol,
        "origin": row.origin,
        "received": row.received.isoformat(),
        "sender": row.sender,
        "organization": row.organization,
        "control_id": row.control_id,
        "message_type": row.message_type,
        "version": row.version,
        "charset": row.charset,
        "outcome": row.outcome,
        "ack_code": row.ack_code,
        "warnings": row.warnings,
        "error": row.error,
        "resources": row.resources,
        "attempts": row.attempts,
    }


def detail(row: inbound.Archived) -> dict[str, Any]:
    out = summary(row)
    codec = (row.charset and _codec(row.charset)) or "utf-8"
    out["message"] = row.raw.decode(codec, errors="replace") if row.raw else None
    out["ack"] = row.ack.decode(codec, errors="replace") if row.ack else None
    return out


def _codec(charset: str) -> str | None:
    from adapters.hl7v2 import charsets

    try:
        return charsets.codec_for(charset)
    except KeyError:
        return None


@router.get("/messages")
def list_messages(
    ctx: ContextDep,
    who: PrincipalDep,
    outcome: str | None = None,
    protocol: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = 0,
) -> dict[str, Any]:
    _admin(who)
    with reader(ctx.engine).connect() as conn:
        total, rows = inbound.listing(
            conn, protocol=protocol, outcome=outcome, limit=limit, offset=offset
        )
    ctx.records.audit(who, Event("archive-list", (f"inbound?outcome={outcome or ''}",)))
    return {"total": total, "messages": [summary(r) for r in rows]}


@router.get("/messages/{archive_id}")
def show_message(archive_id: str, ctx: ContextDep, who: PrincipalDep) -> dict[str, Any]:
    _admin(who)
    with reader(ctx.engine).connect() as conn:
        row = inbound.get(conn, archive_id)
    if row is None:
        raise NotFound(f"no archived message {archive_id}")
    patients = (row.patient_id,) if row.patient_id else ()
    ctx.records.audit(who, Event("archive-read", (f"inbound/{archive_id}",), patients))
    return detail(row)


@router.post("/messages/{archive_id}/reprocess")
async def reprocess(archive_id: str, ctx: ContextDep, who: PrincipalDep) -> dict[str, Any]:
    _admin(who)
    reply = await run_in_threadpool(ctx.hl7.reprocess, archive_id, who)
    if reply is None:
        raise NotFound(f"no archived HL7 message {archive_id}")
    return {
        "id": reply.archive_id,
        "outcome": reply.outcome,
        "ack_code": reply.code,
        "warnings": reply.warnings,
        "error": reply.error,
    }
