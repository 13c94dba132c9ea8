"""HL7 v2 over HTTP for clinics without MLLP: POST the message, get the ACK back."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from adapters.hl7v2.ingest import Origin
from gateway.deps import ContextDep, PrincipalDep
from records.errors import Forbidden, Invalid
from security.principal import Role

router = APIRouter(tags=["HL7 v2"])
HL7_MEDIA = "x-application/hl7-v2+er7"
SENDERS = {Role.TOWNSHIP_DOCTOR, Role.SPECIALIST, Role.SYSTEM}


@router.post(
    "/hl7/v2",
    responses={200: {"content": {HL7_MEDIA: {}}, "description": "the ACK (AA/AE/AR or CA/CE/CR)"}},
)
async def receive(request: Request, ctx: ContextDep, who: PrincipalDep) -> Response:
    """Send one HL7 v2 message as the body (any of the charsets MSH-18 names). The answer is
    the ACK message; ``X-Yilian-Outcome`` and ``X-Yilian-Archive-Id`` say what became of it."""
    if who.role not in SENDERS or not who.organization:
        raise Forbidden("only a clinic's users and system clients send HL7 messages")
    raw = await request.body()
    if not raw.strip():
        raise Invalid("the request has no body; send one HL7 v2 message")
    origin = Origin("http", who.source, who.organization)
    reply = await ctx.hl7.receive_async(raw, origin, ctx.executor)
    headers = {"X-Yilian-Outcome": reply.outcome, "X-Yilian-Archive-Id": reply.archive_id}
    if reply.ack is None:
        return Response(status_code=204, headers=headers)
    return Response(reply.ack, media_type=HL7_MEDIA, headers=headers)
