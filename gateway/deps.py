"""Dependencies declared once: the wired context and the authenticated principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.context import Context
from records.errors import Unauthorized
from security.principal import Principal
from security.tokens import InvalidToken


def get_context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def client_address(request: Request) -> str | None:
    return f"{request.client.host}" if request.client else None


def current_principal(request: Request, ctx: Annotated[Context, Depends(get_context)]) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "this call needs 'Authorization: Bearer <token>'; get one at POST /auth/token"
        )
    try:
        principal = ctx.tokens.verify(token.strip())
    except InvalidToken as exc:
        raise Unauthorized(f"the bearer token is not valid: {exc}") from None
    return principal.with_source(client_address(request))


ContextDep = Annotated[Context, Depends(get_context)]
PrincipalDep = Annotated[Principal, Depends(current_principal)]
