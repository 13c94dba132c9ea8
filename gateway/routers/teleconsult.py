"""Remote diagnosis over HTTP: the plain JSON API the web pages use, the FHIR Task operations,
and ``$process-message``, where other member gateways deliver (mutual TLS + a peer token)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from gateway.deps import ContextDep, PeerOrganizationDep, PrincipalDep
from gateway.fhirhttp import FhirResponse
from records.db import reader
from records.errors import Forbidden, Invalid
from records.store import Stored
from security.principal import Role
from teleconsult import directory, lifecycle
from teleconsult.messages import key_of
from teleconsult.service import PEER, ReportForm, RequestForm, Submitted, extension

router = APIRouter(tags=["remote diagnosis"])

# FHIR Task operations and the status each one moves to
OPERATIONS = {
    "accept": lifecycle.ACCEPTED,
    "reject": lifecycle.REJECTED,
    "start": lifecycle.IN_PROGRESS,
    "hold": lifecycle.ON_HOLD,
    "resume": lifecycle.IN_PROGRESS,
    "fail": lifecycle.FAILED,
    "cancel": lifecycle.CANCELLED,
    "submit": lifecycle.REQUESTED,
}


class RequestIn(BaseModel):
    kind: str = Field(description="imaging | ecg | consultation")
    patient: str = Field(description="Patient id")
    priority: str = "routine"
    question: str = ""
    reason: str = ""
    specialty: str | None = None
    studies: list[str] = []
    observations: list[str] = []
    documents: list[str] = []
    draft: bool = False


class ReportIn(BaseModel):
    conclusion: str
    codes: list[dict[str, str]] = []


class StatusIn(BaseModel):
    status: str
    reason: str | None = None


def summary(task: Stored) -> dict[str, Any]:
    body = task.json()
    restriction = (body.get("restriction") or {}).get("period") or {}
    notes = [n.get("text", "") for n in body.get("note", [])]
    return {
        "id": task.res_id,
        "key": key_of(body),
        "status": body.get("status"),
        "status_reason": (body.get("statusReason") or {}).get("text"),
        "priority": body.get("priority"),
        "kind": ((body.get("code") or {}).get("coding") or [{}])[0].get("code"),
        "title": (body.get("code") or {}).get("text"),
        "patient": (body.get("for") or {}).get("reference"),
        "patient_name": (body.get("for") or {}).get("display"),
        "owner": (body.get("owner") or {}).get("reference"),
        "peer": extension(body, PEER),
        "requester": (body.get("requester") or {}).get("display")
        or (body.get("requester") or {}).get("reference"),
        "deadline": restriction.get("end"),
        "authored": body.get("authoredOn"),
        "modified": body.get("lastModified"),
        "service_request": (body.get("focus") or {}).get("reference"),
        "routing": next((n for n in reversed(notes) if "routing" in n), None),
        "output": [o.get("valueReference", {}).get("reference") for o in body.get("output", [])],
    }


@router.post("/api/teleconsult/requests", status_code=201)
async def submit(form: RequestIn, ctx: ContextDep, who: PrincipalDep) -> dict[str, Any]:
    """A township doctor requests remote imaging or ECG diagnosis or a consultation."""
    done: Submitted = await run_in_threadpool(
        ctx.teleconsult.submit, who, RequestForm(**form.model_dump())
    )
    return {
        "task": summary(done.task),
        "service_request": done.service_request.res_id,
        "routing": {
            "organization": done.decision.service.organization_code,
            "service": done.decision.service.name,
            "rule": done.decision.rule,
            "deadline": done.decision.deadline.isoformat(timespec="seconds"),
            "explanation": done.decision.explanation,
        },
    }


@router.get("/api/teleconsult/requests/{task_id}")
async def show(task_id: str, ctx: ContextDep, who: PrincipalDep) -> dict[str, Any]:
    task = await run_in_threadpool(ctx.records.read, who, "Task", task_id)
    assert isinstance(task, Stored)
    return summary(task)


@router.post("/api/teleconsult/requests/{task_id}/status")
async def move(
    task_id: str, change: StatusIn, ctx: ContextDep, who: PrincipalDep
) -> dict[str, Any]:
    """Accept, reject, start, hold, resume, fail or cancel (the lifecycle decides)."""
    task = await run_in_threadpool(ctx.teleconsult.move, who, task_id, change.status, change.reason)
    return summary(task)


@router.post("/api/teleconsult/requests/{task_id}/report", status_code=201)
async def report(
    task_id: str, form: ReportIn, ctx: ContextDep, who: PrincipalDep
) -> dict[str, Any]:
    """The specialist's report: signed with the hospital's key, sent back, the Task completed."""
    made, task = await run_in_threadpool(
        ctx.teleconsult.report, who, task_id, ReportForm(form.conclusion, form.codes)
    )
    return {"report": made.res_id, "task": summary(task)}


@router.get("/api/teleconsult/worklist")
async def worklist(ctx: ContextDep, who: PrincipalDep) -> list[dict[str, Any]]:
    """A specialist's hospital's open requests, most urgent and nearest deadline first."""
    if who.role != Role.SPECIALIST:
        raise Forbidden("the worklist is for specialists")
    tasks = await run_in_threadpool(ctx.teleconsult.worklist, who)
    return [summary(t) for t in tasks]


@router.post("/fhir/Task/{task_id}/${operation}")
async def task_operation(
    task_id: str, operation: str, request: Request, ctx: ContextDep, who: PrincipalDep
) -> FhirResponse:
    """``$accept``, ``$reject``, ``$start``, ``$hold``, ``$resume``, ``$fail``, ``$cancel``,
    ``$submit``, with an optional Parameters body naming the ``reason``."""
    status = OPERATIONS.get(operation)
    if status is None:
        raise Invalid(
            f"unknown Task operation ${operation}; known: " + ", ".join(f"${o}" for o in OPERATIONS)
        )
    reason = None
    raw = await request.body()
    if raw:
        params = json.loads(raw)
        for p in params.get("parameter", []) if isinstance(params, dict) else []:
            if p.get("name") == "reason":
                reason = p.get("valueString")
    task = await run_in_threadpool(ctx.teleconsult.move, who, task_id, status, reason)
    return FhirResponse(task.json() | {"id": task.res_id})


@router.post("/fhir/$process-message")
async def process_message(
    request: Request, ctx: ContextDep, who: PrincipalDep, member: PeerOrganizationDep
) -> FhirResponse:
    """Another member gateway delivers a message: only with its client certificate and a
    peer token for the same organization."""
    if who.role != Role.PEER:
        raise Forbidden("$process-message is for consortium member gateways")
    if member is None:
        raise Forbidden("a member gateway presents its client certificate (mutual TLS)")
    with reader(ctx.engine).connect() as conn:
        organization = directory.organization_of_code(conn, member)
    if organization is None or organization != who.organization:
        raise Forbidden(
            f"the certificate names {member}, the token {who.organization}: they must agree"
        )
    raw = await request.body()
    try:
        bundle = json.loads(raw)
    except ValueError:
        raise Invalid("the body is not JSON") from None
    answer = await run_in_threadpool(ctx.inbox.process, who, member, bundle, raw)
    return FhirResponse(answer)
