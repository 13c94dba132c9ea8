"""Start and stop the protocol listeners that run beside HTTP in the one process."""

from __future__ import annotations

import logging
import ssl

from adapters.hl7v2.listener import ListenerSettings, MllpListener
from dicom.qr import QueryRetrieve
from dicom.scp import DicomServer, ScpSettings
from gateway.context import Context
from records.db import reader
from records.fhirtypes import ORG_CODE_SYSTEM
from security.tls import certificate_common_name, server_context

log = logging.getLogger(__name__)


class Listeners:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.mllp: MllpListener | None = None
        self.dicom: DicomServer | None = None

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
                ssl_context=self._tls("mllp"),
                organization_of_certificate=self._organization_of_certificate,
            )
            await self.mllp.start()
        if settings.dicom_enabled:
            qr = QueryRetrieve(self.ctx.dicom, self._organization_of_certificate)
            self.dicom = DicomServer(
                self.ctx.dicom,
                ScpSettings(
                    ae_title=settings.dicom_ae, host=settings.http_host, port=settings.dicom_port
                ),
                ssl_context=self._tls("dicom"),
                known_ae_titles=self.ctx.dicom.known_ae_titles,
                organization_of_certificate=self._organization_of_certificate,
                extra_handlers=qr.handlers(),
                configure=qr.configure,
            )
            self.dicom.start()

    def _tls(self, listener: str) -> ssl.SSLContext | None:
        """The listener's TLS context when its certificate and key are set, else None."""
        cert, key, ca = self.ctx.settings.tls_files(listener)
        if not (cert and key):
            return None
        return server_context(str(cert), str(key), str(ca) if ca else None)

    async def stop(self) -> None:
        if self.mllp is not None:
            await self.mllp.stop()
        if self.dicom is not None:
            self.dicom.stop()

    def _organization_of_certificate(self, certificate: dict) -> str | None:  # type: ignore[type-arg]
        """A client certificate's common name is the clinic's code (XINGFU_THC)."""
        name = certificate_common_name(certificate)
        if not name:
            return None
        with reader(self.ctx.engine).connect() as conn:
            found = self.ctx.records.find_by_identifier(conn, "Organization", ORG_CODE_SYSTEM, name)
        return found[0].res_id if found else None
