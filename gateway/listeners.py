"""Start and stop the protocol listeners that run beside HTTP: MLLP, and DICOM in the gateway's
process and in the DICOM processes beside it (``gateway.dicom_processes``)."""

from __future__ import annotations

import logging
import socket
import ssl
from functools import partial

from adapters.hl7v2.listener import ListenerSettings, MllpListener
from dicom.qr import QueryRetrieve
from dicom.scp import DicomServer, ScpSettings
from gateway.context import Context
from gateway.dicom_processes import DicomProcesses
from gateway.settings import Settings
from records.db import reader
from records.fhirtypes import ORG_CODE_SYSTEM
from security.tls import certificate_common_name, server_context

log = logging.getLogger(__name__)


class Listeners:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.mllp: MllpListener | None = None
        self.dicom: DicomServer | None = None
        self.dicom_processes: DicomProcesses | None = None

    async def start(self) -> None:
        settings = self.ctx.settings
        if settings.mllp_enabled:
            self.mllp = MllpListener(
                self.ctx.hl7,
                ListenerSettings(
                    host=settings.http_host,
                    port=settings.mllp_port,
                    max_bytes=settings.hl7_max_bytes,
                    idle_timeout=settings.mllp_idle_timeout,
                    frame_timeout=settings.mllp_frame_timeout,
                ),
                self.ctx.executor,
                ssl_context=listener_tls(settings, "mllp"),
                organization_of_certificate=partial(organization_of_certificate, self.ctx),
            )
            await self.mllp.start()
        if settings.dicom_enabled:
            self.dicom = dicom_server(self.ctx)
            others = settings.resolved_dicom_processes - 1
            listening = shared_socket(settings.http_host, settings.dicom_port) if others else None
            self.dicom.start(listening)
            if listening is not None:
                self.dicom_processes = DicomProcesses(others, listening, settings)
                self.dicom_processes.start()

    async def stop(self) -> None:
        if self.mllp is not None:
            await self.mllp.stop()
        if self.dicom_processes is not None:
            self.dicom_processes.stop()
        if self.dicom is not None:
            self.dicom.stop()


def dicom_server(ctx: Context) -> DicomServer:
    """The DICOM Application Entity's server, as every DICOM process runs it."""
    settings = ctx.settings
    owner = partial(organization_of_certificate, ctx)
    qr = QueryRetrieve(ctx.dicom, owner)
    return DicomServer(
        ctx.dicom,
        ScpSettings(ae_title=settings.dicom_ae, host=settings.http_host, port=settings.dicom_port),
        ssl_context=listener_tls(settings, "dicom"),
        known_ae_titles=ctx.dicom.known_ae_titles,
        organization_of_certificate=owner,
        extra_handlers=qr.handlers(),
        configure=qr.configure,
    )


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket for the DICOM processes to share (``dicom.scp._SharedServer``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


def listener_tls(settings: Settings, listener: str) -> ssl.SSLContext | None:
    """The listener's TLS context when its certificate and key are set, else None."""
    cert, key, ca = settings.tls_files(listener)
    if not (cert and key):
        return None
    return server_context(str(cert), str(key), str(ca) if ca else None)


def organization_of_certificate(ctx: Context, certificate: dict) -> str | None:  # type: ignore[type-arg]
    """A client certificate's common name is the clinic's code (XINGFU_THC)."""
    name = certificate_common_name(certificate)
    if not name:
        return None
    with reader(ctx.engine).connect() as conn:
        found = ctx.records.find_by_identifier(conn, "Organization", ORG_CODE_SYSTEM, name)
    return found[0].res_id if found else None
