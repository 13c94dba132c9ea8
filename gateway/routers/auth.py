"""OAuth2 token endpoint: password grant for people, client_credentials for system clients."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from gateway.deps import ContextDep, client_address
from records import users
from records.audit_log import Event
from security.principal import Principal, Role

router = APIRouter(tags=["auth"])


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="yilian"'
    return JSONResponse({"error": error, "error_description": description}, status, headers=headers)


@router.post("/auth/token")
async def token(request: Request, ctx: ContextDep) -> JSONResponse:
    form = await request.form()
    grant = str(form.get("grant_type", ""))
    if grant == "password":
        username, secret, kind = (
            str(form.get("username", "")),
            str(form.get("password", "")),
            "person",
        )
    elif grant == "client_credentials":
        username, secret = _client_credentials(request, form)
        kind = "client"
    else:
        return _oauth_error(
            400, "unsupported_grant_type", "grant_type must be 'password' or 'client_credentials'"
        )
    if not username or not secret:
        return _oauth_error(
            400, "invalid_request", "username and password (or client credentials) are required"
        )
    source = client_address(request)

    def check() -> users.User | None:
        with ctx.engine.begin() as conn:
            return users.authenticate(conn, username, secret, kind=kind)

    user = await run_in_threadpool(check)
    if user is None:
        anonymous = Principal(username=username[:128], role=Role.SYSTEM, source=source)
        await run_in_threadpool(
            ctx.records.audit,
            anonymous,
            Event("login", (), (), "refused", f"bad credentials ({grant})"),
        )
        return _oauth_error(
            401 if kind == "client" else 400,
            "invalid_grant" if kind == "person" else "invalid_client",
            "unknown user or wrong password",
        )
    principal = user.principal(source)
    await run_in_threadpool(ctx.records.audit, principal, Event("login", (), (), "success", grant))
    return JSONResponse(
        {
            "access_token": ctx.tokens.issue(principal),
            "token_type": "Bearer",
            "expires_in": ctx.tokens.ttl_seconds,
            "role": user.role.value,
            "organization": user.organization,
            "patient": user.patient_id,
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _client_credentials(request: Request, form) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(header[6:]).decode()
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
        client_id, _, secret = decoded.partition(":")
        return client_id, secret
    return str(form.get("client_id", "")), str(form.get("client_secret", ""))
