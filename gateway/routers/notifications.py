"""Notifications for the web pages: the caller's own (``teleconsult.notify``), newest first, and
marking one read. Everything goes through the records boundary, which shows a notification to
its recipient only and audits the reading; FHIR clients read the same Communications at
``/fhir/Communication`` and have them pushed with a ``/fhir/Subscription``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from gateway.deps import ContextDep, PrincipalDep
from records.service import SearchResult
from teleconsult import notify

router = APIRouter(tags=["notifications"])


@router.get("/api/notifications")
async def listing(
    ctx: ContextDep,
    who: PrincipalDep,
    unread: bool = False,
    count: Annotated[int, Query(alias="_count", ge=1, le=200)] = 20,
) -> dict[str, Any]:
    """The caller's notifications, newest first; ``unread=true``: those not yet read."""
    found: SearchResult = await run_in_threadpool(
        lambda: notify.listing(ctx.records, who, unread=unread, count=count)
    )
    return {"total": found.total, "items": [notify.summary(s) for s in found.matches]}


@router.post("/api/notifications/{communication_id}/read")
async def read(communication_id: str, ctx: ContextDep, who: PrincipalDep) -> dict[str, Any]:
    """The recipient has read it (``Communication.received``); reading it again changes
    nothing."""
    done = await run_in_threadpool(notify.mark_read, ctx.records, who, communication_id)
    return notify.summary(done)
