"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from gateway.deps import ContextDep
from records import db

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ctx: ContextDep) -> JSONResponse:
    """The database answers and its schema is current: safe to send traffic."""
    checks: dict[str, str] = {}
    try:
        current = await run_in_threadpool(db.schema_is_current, ctx.engine)
        checks["database"] = "ok"
        checks["schema"] = "ok" if current else "migration pending"
    except SQLAlchemyError as exc:
        log.warning("readiness: database unreachable: %s", type(exc).__name__)
        checks["database"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )
