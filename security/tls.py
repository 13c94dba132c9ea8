"""TLS for the gateway's listeners (MLLP, DICOM): the server context and who a client
certificate names."""

from __future__ import annotations

import ssl


def certificate_common_name(certificate: dict) -> str | None:  # type: ignore[type-arg]
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def server_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """TLS 1.2+; with ``client_ca`` every client must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
