"""Structured logs and request metrics. Neither ever holds patient data.

Request lines name the route template (``/fhir/{rtype}/{rid}``), never the concrete path or the
query string: both can carry names and identity numbers.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from records import outbox

log = logging.getLogger("yilian.http")

_STANDARD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # it logs full URLs


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.seconds: dict[tuple[str, str], float] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.seconds[(method, route)] = self.seconds.get((method, route), 0.0) + seconds

    def render(self) -> str:
        lines = [
            "# HELP yilian_http_requests_total HTTP requests by method, route template and status.",
            "# TYPE yilian_http_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), n in sorted(self.requests.items()):
                labels = f'method="{method}",route="{route}",status="{status}"'
                lines.append(f"yilian_http_requests_total{{{labels}}} {n}")
            lines += [
                "# HELP yilian_http_request_seconds_total Time spent answering, by route template.",
                "# TYPE yilian_http_request_seconds_total counter",
            ]
            for (method, route), total in sorted(self.seconds.items()):
                labels = f'method="{method}",route="{route}"'
                lines.append(f"yilian_http_request_seconds_total{{{labels}}} {total:.6f}")
        return "\n".join(lines) + "\n"


class RequestLog:
    """ASGI middleware: one log line and one metric per request, by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        request_id = uuid.uuid4().hex[:16]

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            self.metrics.observe(scope["method"], route, status, elapsed)
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    "request_id": request_id,
                },
            )


def outbox_metrics(engine: Engine) -> str:
    """Store-and-forward queue: rows by status and the age of the oldest waiting one."""
    depth = outbox.depth(engine)
    lines = [
        "# HELP yilian_outbox_depth Outbox rows by status (pending: not yet delivered).",
        "# TYPE yilian_outbox_depth gauge",
        *(f'yilian_outbox_depth{{status="{s}"}} {n}' for s, n in depth.by_status.items()),
        "# HELP yilian_outbox_oldest_age_seconds Age of the oldest undelivered outbox row.",
        "# TYPE yilian_outbox_oldest_age_seconds gauge",
        f"yilian_outbox_oldest_age_seconds {depth.oldest_age():.3f}",
    ]
    return "\n".join(lines) + "\n"
