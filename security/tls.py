"""TLS for the gateway's listeners (HTTP, MLLP, DICOM) and its calls to other consortium
members: the server and client contexts, and who a client certificate names."""

from __future__ import annotations

import os
import ssl
from datetime import datetime
from pathlib import Path
from typing import TypeAlias

from cryptography import x509

StrPath: TypeAlias = str | os.PathLike[str]


def certificate_common_name(certificate: dict) -> str | None:  # type: ignore[type-arg]
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def server_context(
    cert: StrPath,
    key: StrPath,
    client_ca: StrPath | None,
    *,
    client_certificate: ssl.VerifyMode = ssl.CERT_REQUIRED,
) -> ssl.SSLContext:
    """TLS 1.2+ for a listener. With ``client_ca`` clients are asked for a certificate, and only
    that CA is trusted to sign one (not the system's public CAs). ``client_certificate``:
    CERT_REQUIRED (MLLP, DICOM) refuses a client without one; CERT_OPTIONAL (HTTP, where
    browsers have none) lets it in. Either way a certificate that is presented must verify,
    or the handshake fails."""
    if client_certificate not in (ssl.CERT_REQUIRED, ssl.CERT_OPTIONAL):
        raise ValueError("client_certificate is ssl.CERT_REQUIRED or ssl.CERT_OPTIONAL")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # loads no CA
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # the client certificate read at the handshake holds for the whole connection
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = client_certificate
    return context


def client_context(cert: StrPath, key: StrPath, ca: StrPath) -> ssl.SSLContext:
    """TLS 1.2+ for calling another consortium member: the server must present a certificate
    signed by ``ca`` (the consortium CA, not the system's public CAs) for the host name called;
    we present ours (``cert``, ``key``), whose common name is our organization code."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def certificate_expiry(cert: StrPath) -> datetime:
    """When the (first) certificate in a PEM file stops being valid."""
    loaded = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    return loaded.not_valid_after_utc


def certificate_file_common_name(cert: StrPath) -> str | None:
    """The common name of the (first) certificate in a PEM file."""
    loaded = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    names = loaded.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else None
