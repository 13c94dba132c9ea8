"""HTTPS on the HTTP listener, with optional client certificates, on real sockets.

A throw-away app run by the machinery of ``yilian serve`` (gateway.https.uvicorn_config, both
HTTP protocol classes, uvicorn in a thread) shows what the dependencies of gateway.deps see; one
test runs ``yilian serve`` itself with YILIAN_HTTP_TLS_* set. A certificate that is presented
must verify against the client CA (an expired one, or one of another CA, is refused: under TLS
1.2 the handshake fails, under 1.3 the server closes before answering); no certificate is fine.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import ValidationError

from gateway.deps import PeerCertificateDep, PeerOrganizationDep
from gateway.https import HttpProtocol, HttpToolsTlsProtocol, uvicorn_config
from gateway.settings import Settings
from security.tls import client_context, server_context
from tests.tls import TestCA, make_ca, serving

MEMBER = "XINGFU_THC"
TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"), clients=[MEMBER], expired_clients=["OLD_THC"])


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """Another CA, with a certificate of the same common name."""
    return make_ca(tmp_path_factory.mktemp("stranger"), clients=[MEMBER])


def https_settings(ca: TestCA, **more: Any) -> Settings:
    return Settings(
        http_port=0,
        http_tls_cert=ca.server_cert,
        http_tls_key=ca.server_key,
        http_tls_client_ca=ca.ca_cert,
        **more,
    )


def trusting(ca: TestCA, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client that trusts the server's CA and presents no certificate."""
    context = ssl.create_default_context(cafile=str(ca.ca_cert))
    if maximum:
        context.maximum_version = maximum
    return context


def probe_app() -> FastAPI:
    """What a route sees of the client certificate (an app of the tests, not of the gateway)."""
    app = FastAPI()

    @app.get("/peer")
    def peer(
        request: Request, certificate: PeerCertificateDep, organization: PeerOrganizationDep
    ) -> dict[str, Any]:
        tls = (request.scope.get("extensions") or {}).get("tls")
        return {
            "organization": organization,
            "subject": certificate["subject"] if certificate else None,
            "scheme": request.url.scheme,
            "tls": {k: v for k, v in tls.items() if k != "peercert"} if tls else None,
        }

    return app


@pytest.fixture(params=["httptools", "h11"])
def https_port(request: pytest.FixtureRequest, ca: TestCA) -> Iterator[int]:
    with serving(probe_app(), https_settings(ca), request.param) as port:
        yield port


def refused(port: int, context: ssl.SSLContext) -> None:
    """Connect, send a request, and fail unless the server hangs up without an HTTP answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /peer HTTP/1.1\r\nHost: localhost\r\n\r\n")
                answer = tls.recv(1024)
        except (ssl.SSLError, ConnectionResetError):
            return  # the handshake failed (TLS 1.2), or the server cut the connection
    assert answer == b"", f"the server answered: {answer!r}"


# --- the listener and what a route sees --------------------------------------------------------


def test_without_a_client_certificate_a_request_goes_through(https_port: int, ca: TestCA) -> None:
    response = httpx.get(f"https://localhost:{https_port}/peer", verify=trusting(ca))
    assert response.status_code == 200
    seen = response.json()
    assert seen["organization"] is None and seen["subject"] is None
    assert seen["scheme"] == "https"
    tls = seen["tls"]  # the ASGI TLS extension
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] == 0x0304 and isinstance(tls["cipher_suite"], int)
    assert tls["server_cert"] == ca.server_cert.read_text()


@pytest.mark.parametrize("maximum", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_a_member_certificate_names_its_organization(
    https_port: int, ca: TestCA, maximum: ssl.TLSVersion
) -> None:
    cert, key = ca.client_files(MEMBER)
    context = client_context(cert, key, ca.ca_cert)  # the outbound side of security.tls
    context.maximum_version = maximum
    with httpx.Client(verify=context) as client:
        for _ in range(2):  # two requests on one kept-alive connection
            seen = client.get(f"https://localhost:{https_port}/peer").json()
            assert seen["organization"] == MEMBER
            assert seen["subject"] == [[["commonName", MEMBER]]]
            tls = seen["tls"]
            assert tls["client_cert_name"] == f"CN={MEMBER}"
            assert tls["client_cert_chain"] == [cert.read_text()]
            assert tls["tls_version"] == (0x0303 if maximum is ssl.TLSVersion.TLSv1_2 else 0x0304)
            assert tls["cipher_suite"] in {0xC02B, 0xC02C, 0xCCA9, 0x1301, 0x1302, 0x1303}


@pytest.mark.parametrize("maximum", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_an_expired_client_certificate_is_refused(
    https_port: int, ca: TestCA, maximum: ssl.TLSVersion
) -> None:
    context = trusting(ca, maximum)
    context.load_cert_chain(*map(str, ca.client_files("OLD_THC")))
    refused(https_port, context)


@pytest.mark.parametrize("maximum", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_a_certificate_of_another_ca_is_refused(
    https_port: int, ca: TestCA, stranger: TestCA, maximum: ssl.TLSVersion
) -> None:
    context = trusting(ca, maximum)
    context.load_cert_chain(*map(str, stranger.client_files(MEMBER)))
    refused(https_port, context)


def test_plain_http_to_the_https_port_gets_no_answer(https_port: int) -> None:
    with socket.create_connection(("127.0.0.1", https_port), timeout=10) as raw:
        raw.sendall(b"GET /peer HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            answer = raw.recv(1024)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/"), answer
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{https_port}/peer")


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_plain_http_carries_no_tls_extension(protocol: HttpProtocol) -> None:
    with serving(probe_app(), Settings(http_port=0), protocol) as port:
        seen = httpx.get(f"http://127.0.0.1:{port}/peer").json()
    assert seen == {"organization": None, "subject": None, "scheme": "http", "tls": None}


def test_without_a_client_ca_no_certificate_is_asked_for(ca: TestCA) -> None:
    settings = Settings(http_port=0, http_tls_cert=ca.server_cert, http_tls_key=ca.server_key)
    with serving(probe_app(), settings, "httptools") as port:
        context = ca.client_context(MEMBER)  # offered, but never asked for
        seen = httpx.get(f"https://localhost:{port}/peer", verify=context).json()
    assert seen["organization"] is None and seen["tls"]["client_cert_chain"] == []


def test_serve_uses_the_httptools_protocol_with_the_tls_extension(ca: TestCA) -> None:
    config = uvicorn_config(probe_app(), https_settings(ca))
    config.load()
    assert config.http_protocol_class is HttpToolsTlsProtocol
    assert config.ssl is not None and config.ssl.verify_mode == ssl.CERT_OPTIONAL


def test_an_unreadable_certificate_is_a_clear_error(tmp_path: Path, ca: TestCA) -> None:
    settings = Settings(http_tls_cert=tmp_path / "missing.crt", http_tls_key=ca.server_key)
    with pytest.raises(SystemExit, match="cannot load the HTTPS certificate .*missing.crt"):
        uvicorn_config(probe_app(), settings)


# --- security.tls --------------------------------------------------------------------------------


def test_listener_contexts_trust_only_the_client_ca(
    ca: TestCA, stranger: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(stranger.ca_cert))  # a "system" CA
    required = server_context(ca.server_cert, ca.server_key, ca.ca_cert)
    optional = server_context(
        ca.server_cert, ca.server_key, ca.ca_cert, client_certificate=ssl.CERT_OPTIONAL
    )
    assert required.verify_mode == ssl.CERT_REQUIRED  # MLLP and DICOM, as before
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    for context in (required, optional):
        assert context.cert_store_stats()["x509_ca"] == 1
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError, match="CERT_REQUIRED or ssl.CERT_OPTIONAL"):
        server_context(ca.server_cert, ca.server_key, ca.ca_cert, client_certificate=ssl.CERT_NONE)


def test_the_client_context_refuses_a_server_of_another_ca(
    https_port: int, ca: TestCA, stranger: TestCA
) -> None:
    cert, key = stranger.client_files(MEMBER)
    context = client_context(cert, key, stranger.ca_cert)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://localhost:{https_port}/peer", verify=context)


# --- settings ------------------------------------------------------------------------------------


def test_https_settings_go_together(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="http_tls_cert and http_tls_key go together"):
        Settings(http_tls_cert=tmp_path / "server.crt")
    with pytest.raises(ValidationError, match="http_tls_cert and http_tls_key go together"):
        Settings(http_tls_key=tmp_path / "server.key")
    with pytest.raises(ValidationError, match="http_tls_client_ca needs http_tls_cert"):
        Settings(http_tls_client_ca=tmp_path / "ca.crt")


def test_https_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("cert", "key", "client_ca"):
        monkeypatch.setenv(f"YILIAN_HTTP_TLS_{name.upper()}", str(tmp_path / name))
    assert Settings().tls_files("http") == (
        tmp_path / "cert",
        tmp_path / "key",
        tmp_path / "client_ca",
    )


# --- yilian serve --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_yilian_serve_speaks_https_with_optional_client_certificates(
    tmp_path: Path, ca: TestCA, stranger: TestCA
) -> None:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("YILIAN_")},
        "YILIAN_DATA_DIR": str(tmp_path / "var"),
        "YILIAN_HTTP_PORT": str(port),
        "YILIAN_MLLP_ENABLED": "false",
        "YILIAN_DICOM_ENABLED": "false",
        "YILIAN_HL7_WORKERS": "0",
        "YILIAN_HTTP_TLS_CERT": str(ca.server_cert),
        "YILIAN_HTTP_TLS_KEY": str(ca.server_key),
        "YILIAN_HTTP_TLS_CLIENT_CA": str(ca.ca_cert),
    }
    base = f"https://localhost:{port}"
    with open(tmp_path / "serve.log", "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "yilian serve did not become ready in 60 s"
            try:
                if httpx.get(f"{base}/readyz", verify=trusting(ca), timeout=2).is_success:
                    break
            except httpx.TransportError:
                time.sleep(0.2)

        assert httpx.get(f"{base}/healthz", verify=trusting(ca)).status_code == 200
        assert httpx.get(f"{base}/healthz", verify=ca.client_context(MEMBER)).status_code == 200
        for maximum in TLS_VERSIONS:
            other = trusting(ca, maximum)
            other.load_cert_chain(*map(str, stranger.client_files(MEMBER)))
            refused(port, other)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
