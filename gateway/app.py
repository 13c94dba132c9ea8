"""The FastAPI application: routers, error mapping, and the lifespan that wires everything."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.context import Context
from gateway.fhirhttp import error_response, outcome_response
from gateway.listeners import Listeners
from gateway.observability import Metrics, RequestLog, outbox_metrics
from gateway.routers import (
    admin,
    auth,
    dicomweb,
    fhir,
    health,
    hl7,
    notifications,
    pages,
    teleconsult,
)
from gateway.settings import Settings
from records.errors import FhirError
from teleconsult.deadlines import Deadlines
from teleconsult.delivery import Workers

log = logging.getLogger(__name__)


def create_app(settings: Settings, ctx: Context | None = None) -> FastAPI:
    """Build the app; the context (database, keys) is made in the lifespan unless given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = ctx is None
        app.state.ctx = context = ctx or Context.build(settings, serving=True)
        listeners = Listeners(context)
        await listeners.start()
        app.state.mllp = listeners.mllp
        app.state.dicom = listeners.dicom
        # delivery to other members: only in the gateway itself (tests drive the courier)
        workers = (
            Workers(
                context.courier,
                settings.delivery_workers,
                deadlines=Deadlines(context.teleconsult),
                every=settings.escalation_interval_seconds,
            )
            if own
            else None
        )
        if workers is not None:
            workers.start()
        log.info("gateway ready", extra={"http_port": settings.http_port})
        try:
            yield
        finally:
            if workers is not None:
                workers.stop()
            await listeners.stop()
            if own:
                context.close()
            log.info("gateway stopped")

    app = FastAPI(
        title="Yilian gateway (医联)",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    metrics = Metrics()
    app.state.metrics = metrics
    app.add_middleware(RequestLog, metrics=metrics)

    @app.exception_handler(FhirError)
    async def _fhir_error(_request: Request, exc: FhirError):  # type: ignore[no-untyped-def]
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):  # type: ignore[no-untyped-def]
        where = ", ".join(
            ".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors()[:5]
        )
        return outcome_response(400, "invalid", f"bad request: {where}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):  # type: ignore[no-untyped-def]
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        return outcome_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):  # type: ignore[no-untyped-def]
        log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
        return outcome_response(500, "exception", "internal error; the operator's log has details")

    @app.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
    def _metrics(request: Request) -> str:
        return metrics.render() + outbox_metrics(request.app.state.ctx.engine)

    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(teleconsult.router)  # before fhir: /fhir/$process-message, Task ops
    app.include_router(notifications.router)
    app.include_router(fhir.router)
    app.include_router(hl7.router)
    app.include_router(dicomweb.router)
    app.include_router(admin.router)
    app.include_router(pages.router)
    return app
