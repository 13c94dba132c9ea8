"""A throw-away certificate authority for TLS tests, made with `cryptography` in a temp folder
(keys and certificates are never committed)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.https import HttpProtocol, uvicorn_config
from gateway.settings import Settings


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass
class TestCA:
    __test__ = False  # a helper, not a test class, wherever it is imported

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def client_files(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"client-{name}.crt", self.folder / f"client-{name}.key"

    def client_context(self, name: str) -> ssl.SSLContext:
        cert, key = self.client_files(name)
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(cert), str(key))
        return context


def make_ca(
    folder: Path, clients: list[str], *, days: int = 2, expired_clients: list[str] = ()
) -> TestCA:  # type: ignore[assignment]
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "yilian-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder / "ca", ca_key, ca_cert)

    def issue(
        common_name: str, usage: x509.ObjectIdentifier, path: Path, expired: bool = False
    ) -> None:
        key = _key()
        start = now - datetime.timedelta(days=10 if expired else 0, minutes=5)
        end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=days)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(path, key, cert)

    issue("localhost", ExtendedKeyUsageOID.SERVER_AUTH, folder / "server")
    for name in clients:
        issue(name, ExtendedKeyUsageOID.CLIENT_AUTH, folder / f"client-{name}")
    for name in expired_clients:
        issue(name, ExtendedKeyUsageOID.CLIENT_AUTH, folder / f"client-{name}", expired=True)
    return TestCA(folder)


@contextmanager
def serving(
    app: Any, settings: Settings, protocol: HttpProtocol = "httptools", **options: Any
) -> Iterator[int]:
    """Serve ``app`` as ``yilian serve`` would (uvicorn in a thread); yield the port."""
    options = {"log_level": "warning", "lifespan": "off", **options}
    config = uvicorn_config(app, settings, protocol=protocol, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(15)
