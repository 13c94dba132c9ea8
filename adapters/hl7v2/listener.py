"""The asyncio MLLP listener (optionally TLS with client certificates).

It only decodes frames, awaits the core ingest (``Hl7Ingest.receive_async``: preparing in worker
processes or threads, the commit in the writer thread) and writes back the ACK it returns.
Messages on one connection are handled one after the other, so a sender's messages keep their
order; a message that is refused gets its AE/AR and the next one goes on. If the ingest raises
(the database is unreachable, say), the connection is closed without an ACK: the sender keeps
the message and sends it again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from adapters.hl7v2 import mllp
from adapters.hl7v2.ingest import Hl7Ingest, Origin, Reply

log = logging.getLogger(__name__)


@dataclass
class ListenerSettings:
    host: str = "127.0.0.1"
    port: int = 2575
    max_bytes: int = 4 * 1024 * 1024
    idle_timeout: float = 300.0  # a connection with nothing to say is closed after this
    frame_timeout: float = 30.0  # a started message must be complete within this


class MllpListener:
    def __init__(
        self,
        ingest: Hl7Ingest,
        settings: ListenerSettings,
        executor: Executor,
        *,
        ssl_context: ssl.SSLContext | None = None,
        organization_of_certificate: Callable[[dict], str | None] | None = None,  # type: ignore[type-arg]
    ) -> None:
        self.ingest = ingest
        self.settings = settings
        self.executor = executor
        self.ssl_context = ssl_context
        self.organization_of_certificate = organization_of_certificate
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve,
            self.settings.host,
            self.settings.port,
            ssl=self.ssl_context,
            limit=2**20,
        )
        log.info("MLLP listener started", extra={"port": self.port, "tls": bool(self.ssl_context)})

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self.server.wait_closed()
        log.info("MLLP listener stopped")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._connection(reader, writer)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("MLLP connection ended: %s", type(exc).__name__)
        except Exception:  # an infrastructure fault: no ACK, the sender will retry
            log.exception("MLLP connection closed without ACK after an internal error")
        finally:
            self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else None
        organization = None
        if self.ssl_context is not None and self.organization_of_certificate is not None:
            certificate = writer.get_extra_info("peercert")
            organization = self.organization_of_certificate(certificate) if certificate else None
        origin = Origin("mllp", peer, organization)
        decoder = mllp.Decoder(self.settings.max_bytes)
        loop = asyncio.get_running_loop()
        while True:
            timeout = (
                self.settings.frame_timeout if decoder.in_frame else self.settings.idle_timeout
            )
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                if decoder.in_frame:
                    await self._unreadable(
                        writer,
                        decoder.pending(),
                        origin,
                        f"incomplete message: no end block within {timeout:g} s",
                    )
                return
            if not data:
                if decoder.in_frame:
                    await self._unreadable(
                        None,
                        decoder.pending(),
                        origin,
                        "connection closed in the middle of a message",
                    )
                for event in decoder.close():
                    await self._event(event, writer, origin, loop, reply=False)
                return
            for event in decoder.feed(data):
                await self._event(event, writer, origin, loop)

    async def _event(
        self,
        event: mllp.Event,
        writer: asyncio.StreamWriter,
        origin: Origin,
        loop: asyncio.AbstractEventLoop,
        *,
        reply: bool = True,
    ) -> None:
        if isinstance(event, mllp.Frame):
            answer = await self.ingest.receive_async(event.payload, origin, self.executor)
            await self._send(writer, answer)
        elif isinstance(event, mllp.Junk):
            await self._unreadable(writer if reply else None, event.data, origin, event.reason)
        else:
            reason = (
                f"message of {event.size} bytes exceeds the limit of "
                f"{self.settings.max_bytes} bytes"
            )
            await self._unreadable(writer, event.head, origin, reason)

    async def _unreadable(
        self, writer: asyncio.StreamWriter | None, data: bytes, origin: Origin, reason: str
    ) -> None:
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(
            self.executor, self.ingest.refuse_unreadable, data, origin, reason
        )
        if writer is not None:
            await self._send(writer, answer)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, answer: Reply) -> None:
        if answer.ack is not None:
            writer.write(mllp.frame(answer.ack))
            await writer.drain()
