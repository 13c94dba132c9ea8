"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2): bytes in, frames out. No sockets.

A frame is <VT> message <FS><CR>. The decoder is lenient where senders commonly are sloppy
(blank lines between frames, <FS> without the <CR>) and strict where data would be lost: bytes
outside a frame and frames over the size limit are reported, never silently discarded.
"""

from __future__ import annotations

from dataclasses import dataclass

SB = b"\x0b"  # start block <VT>
EB = b"\x1c"  # end block <FS>
CR = b"\x0d"
JUNK_LIMIT = 64 * 1024  # keep at most this much of unframed bytes for the archive


@dataclass(frozen=True)
class Frame:
    payload: bytes


@dataclass(frozen=True)
class Junk:
    """Bytes that were not inside a frame."""

    data: bytes
    reason: str


@dataclass(frozen=True)
class Oversize:
    size: int
    head: bytes  # the first bytes, kept for the archive and the ACK's MSH


Event = Frame | Junk | Oversize


def frame(payload: bytes) -> bytes:
    return SB + payload + EB + CR


class Decoder:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._discarding = 0  # bytes of an oversize frame dropped so far
        self._head = b""
        self._skip_cr = False
        self._junk = bytearray()

    @property
    def in_frame(self) -> bool:
        """A frame has started and not ended: the sender owes us the rest."""
        return self._in_frame

    def pending(self) -> bytes:
        """What has arrived of an unfinished frame (or of an oversize one, its head)."""
        return self._head if self._discarding else bytes(self._buffer)

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        view = memoryview(data)
        i = 0
        if self._skip_cr and len(view) and view[0:1] == CR:
            i = 1
        self._skip_cr = False
        while i < len(view):
            if not self._in_frame:
                start = data.find(SB, i)
                end_marker = data.find(EB, i)
                if end_marker != -1 and (start == -1 or end_marker < start):
                    # an end block with no start block: a frame whose <VT> was lost
                    self._junk += data[i:end_marker]
                    events.append(
                        Junk(
                            bytes(self._junk[:JUNK_LIMIT]),
                            "frame without a start block (<VT>, 0x0B)",
                        )
                    )
                    self._junk.clear()
                    i = end_marker + 1
                    if i < len(data) and data[i : i + 1] == CR:
                        i += 1
                    elif i == len(data):
                        self._skip_cr = True
                    continue
                stop = start if start != -1 else len(data)
                self._junk += data[i:stop]
                if start == -1:
                    if len(self._junk) > JUNK_LIMIT:
                        events.append(self._flush_junk())
                    break
                if self._junk.strip():
                    events.append(self._flush_junk())
                self._junk.clear()
                self._in_frame = True
                i = start + 1
                continue
            end = data.find(EB, i)
            stop = end if end != -1 else len(data)
            chunk = view[i:stop]
            if self._discarding:
                self._discarding += len(chunk)
            elif len(self._buffer) + len(chunk) > self.max_bytes:
                self._head = bytes(self._buffer[:4096]) if self._buffer else bytes(chunk[:4096])
                self._discarding = len(self._buffer) + len(chunk)
                self._buffer.clear()
            else:
                self._buffer += chunk
            if end == -1:
                break
            if self._discarding:
                events.append(Oversize(self._discarding, self._head))
                self._discarding, self._head = 0, b""
            else:
                events.append(Frame(bytes(self._buffer)))
            self._buffer.clear()
            self._in_frame = False
            i = end + 1
            if i < len(data) and data[i : i + 1] == CR:
                i += 1
            elif i == len(data):
                self._skip_cr = True
        return events

    def _flush_junk(self) -> Junk:
        junk = Junk(bytes(self._junk[:JUNK_LIMIT]), "bytes outside an MLLP frame")
        self._junk.clear()
        return junk

    def close(self) -> list[Event]:
        """The connection ended: report unframed bytes still held."""
        if self._junk.strip():
            return [self._flush_junk()]
        return []
