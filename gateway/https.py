"""HTTPS on the gateway's HTTP listener, and the verified client certificate in each request.

uvicorn (0.54) takes our SSLContext (``Config(ssl_context_factory=...)``) but puts nothing of
the TLS connection in the ASGI scope: no ``tls`` extension, no peer certificate. So the
protocol classes here are uvicorn's own with one addition: on a TLS connection each request's
scope carries ``scope["extensions"]["tls"]``, the ASGI TLS extension (``server_cert``,
``client_cert_chain``, ``client_cert_name``, ``client_cert_error``, ``tls_version``,
``cipher_suite``), plus one key of ours, ``peercert``: the dict of ``ssl.SSLSocket.getpeercert()``
that ``gateway.deps.peer_certificate`` returns. A plain HTTP connection gets no ``tls``
extension, as the specification requires.

The certificate is read once, when the connection is made (after the handshake has verified it;
renegotiation is off, so it holds for the connection). ``yilian serve`` and the tests build their
``uvicorn.Config`` with :func:`uvicorn_config`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from pathlib import Path
from typing import Any, Literal

import uvicorn
from cryptography import x509
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.settings import Settings
from security.tls import server_context

log = logging.getLogger(__name__)

# TLS versions as the ASGI TLS extension numbers them (the protocol's own version field)
_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(
    transport: asyncio.BaseTransport, server_cert_file: str | None
) -> dict[str, Any] | None:
    """The ASGI ``tls`` extension of a connection, or None when it is not TLS."""
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    # None without a client certificate; {} when none was asked for (no client CA): only a
    # certificate the handshake verified is ever passed on
    peercert = ssl_object.getpeercert() or None
    der = ssl_object.getpeercert(binary_form=True) if peercert else None
    cipher = ssl_object.cipher()
    return {
        "server_cert": _first_pem(server_cert_file) if server_cert_file else None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": (
            x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else None
        ),
        "client_cert_error": None,  # a certificate that does not verify fails the handshake
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": _cipher_suite(ssl_object.context, cipher[0]) if cipher else None,
        "peercert": peercert,
    }


@functools.lru_cache(maxsize=8)
def _first_pem(path: str) -> str | None:
    """The first certificate of a PEM file (the server's own, before any intermediates)."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    end = "-----END CERTIFICATE-----"
    start = text.find("-----BEGIN CERTIFICATE-----")
    stop = text.find(end, start)
    return text[start : stop + len(end)] + "\n" if start >= 0 and stop > 0 else None


_CIPHER_SUITES: dict[str, int] = {}


def _cipher_suite(context: ssl.SSLContext, name: str) -> int | None:
    """The IANA number of a cipher suite OpenSSL names (ECDHE-ECDSA-AES128-GCM-SHA256: 0xC02B)."""
    if name not in _CIPHER_SUITES:
        for cipher in context.get_ciphers():
            _CIPHER_SUITES[cipher["name"]] = cipher["id"] & 0xFFFF
    return _CIPHER_SUITES.get(name)


class _WithTls:
    """The application, called with the connection's TLS extension in each scope."""

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"] = {**(scope.get("extensions") or {}), "tls": self.tls}
        await self.app(scope, receive, send)


def _with_tls(app: Any, transport: asyncio.BaseTransport, config: uvicorn.Config) -> Any:
    tls = tls_extension(transport, str(config.ssl_certfile) if config.ssl_certfile else None)
    return app if tls is None else _WithTls(app, tls)


class HttpToolsTlsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; requests on a TLS connection carry the ``tls`` extension."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = _with_tls(self.app, transport, self.config)


class H11TlsProtocol(H11Protocol):
    """uvicorn's h11 protocol; requests on a TLS connection carry the ``tls`` extension."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = _with_tls(self.app, transport, self.config)


HttpProtocol = Literal["httptools", "h11"]
PROTOCOLS: dict[str, type[asyncio.Protocol]] = {
    "httptools": HttpToolsTlsProtocol,
    "h11": H11TlsProtocol,
}


def uvicorn_config(
    app: ASGIApp, settings: Settings, *, protocol: HttpProtocol = "httptools", **options: Any
) -> uvicorn.Config:
    """The uvicorn.Config of the HTTP listener: host and port from the settings; HTTPS when
    ``http_tls_cert`` and ``http_tls_key`` are set, asking for (not requiring) a client
    certificate when ``http_tls_client_ca`` is set too. ``protocol``: httptools, what uvicorn
    picks itself when it is installed (uvicorn[standard] brings it), or h11. ``options`` go to
    uvicorn.Config as they are (log_config, timeout_graceful_shutdown, ...)."""
    cert, key, ca = settings.tls_files("http")
    tls: dict[str, Any] = {}
    if cert and key:
        try:
            context = server_context(cert, key, ca, client_certificate=ssl.CERT_OPTIONAL)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit(
                f"yilian: cannot load the HTTPS certificate {cert}, key {key}"
                + (f" or client CA {ca}" if ca else "")
                + f": {exc}"
            ) from None
        tls = {
            "ssl_certfile": str(cert),
            "ssl_keyfile": str(key),
            "ssl_context_factory": lambda _config, _default: context,
        }
        log.info(
            "HTTPS on port %s; client certificates %s",
            settings.http_port,
            f"asked for, not required (CA {ca})" if ca else "not asked for",
        )
    return uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        http=PROTOCOLS[protocol],
        **tls,
        **options,
    )
