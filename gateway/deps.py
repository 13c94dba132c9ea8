"""Dependencies declared once: the wired context and the authenticated principal."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from gateway.context import Context
from records.errors import Forbidden, Unauthorized
from security.principal import Principal, Role
from security.tls import certificate_common_name
from security.tokens import InvalidToken


def get_context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def client_address(request: Request) -> str | None:
    return f"{request.client.host}" if request.client else None


PROCESS_MESSAGE = "/fhir/$process-message"


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
    if principal.role == Role.PEER and request.url.path != PROCESS_MESSAGE:
        # a member gateway's credentials deliver messages and do nothing else
        raise Forbidden(f"a member gateway's token is good for POST {PROCESS_MESSAGE} only")
    return principal.with_source(client_address(request))


def peer_certificate(request: Request) -> dict[str, Any] | None:
    """The client certificate the TLS handshake verified against ``http_tls_client_ca``, as
    ``ssl.SSLSocket.getpeercert()`` gives it; None over plain HTTP, without a client CA, or
    when the client presented none (browsers, apps). Set by gateway.https; a certificate only
    says which member's machine is calling: the bearer token still says who."""
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    certificate: dict[str, Any] | None = tls.get("peercert") or None
    return certificate


def peer_organization_code(request: Request) -> str | None:
    """The consortium member the client certificate names (its common name, e.g. XINGFU_THC),
    or None without a verified client certificate."""
    certificate = peer_certificate(request)
    return certificate_common_name(certificate) if certificate else None


ContextDep = Annotated[Context, Depends(get_context)]
PrincipalDep = Annotated[Principal, Depends(current_principal)]
PeerCertificateDep = Annotated[dict[str, Any] | None, Depends(peer_certificate)]
PeerOrganizationDep = Annotated[str | None, Depends(peer_organization_code)]
