"""ACK messages: original mode (AA/AE/AR) and enhanced mode (CA/CE/CR, MSH-15/16).

ERR segments name segment, sequence, field and component with the HL7 table 0357 code, in the
v2.5 layout (ERR-2 location, ERR-3 code, ERR-4 severity) for 2.5 and later and in the v2.3/2.4
layout (ERR-1 ELD) before that.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from adapters.hl7v2 import charsets
from adapters.hl7v2.errors import Location
from adapters.hl7v2.escape import escape

APPLICATION = "YILIAN"


@dataclass(frozen=True)
class Issue:
    text: str
    where: Location | None = None
    code: str = "207"
    severity: str = "E"  # E error, W warning, I information


@dataclass(frozen=True)
class Header:
    """What an ACK echoes of the message it answers (all empty when MSH was unreadable)."""

    sending_app: str = ""
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = "2.5.1"
    event: str = ""
    accept_ack: str = ""  # MSH-15
    application_ack: str = ""  # MSH-16
    charset: str = ""  # MSH-18 as sent
    codec: str | None = None

    @property
    def enhanced(self) -> bool:
        return bool(self.accept_ack or self.application_ack)


_WANTED = {"AL": {"ok", "error"}, "ER": {"error"}, "SU": {"ok"}, "NE": set(), "": set()}


def reply_code(header: Header, ok: bool, rejected: bool) -> str | None:
    """The one reply to send on the connection, or None when the sender asked for none.

    Original mode: AA, AE or AR. Enhanced mode: the accept acknowledgment (CA/CE/CR) when
    MSH-15 asks for it; otherwise the application acknowledgment when MSH-16 asks for it.
    The message is committed (or refused) before either is sent, so both mean the same thing.
    """
    outcome = "ok" if ok else "error"
    if not header.enhanced:
        return "AA" if ok else ("AR" if rejected else "AE")
    if outcome in _WANTED.get(header.accept_ack.upper(), {"ok", "error"}):
        return "CA" if ok else ("CR" if rejected else "CE")
    if outcome in _WANTED.get(header.application_ack.upper(), set()):
        return "AA" if ok else ("AR" if rejected else "AE")
    return None


def build(header: Header, code: str, issues: list[Issue], *, text: str = "") -> bytes:
    seps = "|^~\\&"
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    version = header.version or "2.5.1"

    def echo(value: str) -> str:
        """A value read (unescaped) from the message answered, escaped again for the ACK."""
        return escape(value, seps)

    trigger = header.event.split("^")[-1] if header.event else ""
    msh = [
        "MSH",
        "^~\\&",
        APPLICATION,
        echo(header.receiving_facility),
        echo(header.sending_app),
        echo(header.sending_facility),
        now,
        "",
        f"ACK^{echo(trigger)}^ACK" if header.event else "ACK",
        uuid.uuid4().hex[:20],
        echo(header.processing_id or "P"),
        echo(version),
    ]
    if header.charset:
        msh += ["", "", "", "", "", header.charset]  # MSH-18 as sent (raw, not unescaped)
    msa = ["MSA", code, echo(header.control_id)]
    if text:
        msa.append(escape(text[:80], seps))
    segments = ["|".join(msh), "|".join(msa)]
    modern = _at_least(version, (2, 5))
    for issue in issues:
        segments.append(_err(issue, modern, seps))
    return charsets.encode("\r".join(segments) + "\r", header.codec)


def _err(issue: Issue, modern: bool, seps: str) -> str:
    where = issue.where
    text = escape(issue.text[:200], seps)
    if modern:
        # ERR-2 ERL: segment ^ sequence ^ field ^ field repetition ^ component
        location = ""
        if where is not None:
            parts = [
                where.segment,
                str(where.sequence),
                "" if where.field is None else str(where.field),
            ]
            if where.component is not None:
                parts += ["", str(where.component)]
            location = "^".join(parts).rstrip("^")
        code = f"{issue.code}^{text}^HL70357"
        return "|".join(["ERR", "", location, code, issue.severity, "", "", "", text])
    # ERR-1 ELD (v2.3/2.4): segment ^ sequence ^ field position ^ code&text&system. The code
    # is always the 4th component; ELD has no slot for a component, so that is left out.
    segment, sequence, position = "", "", ""
    if where is not None:
        segment, sequence = where.segment, str(where.sequence)
        position = "" if where.field is None else str(where.field)
    coded = seps[4].join([issue.code, text, "HL70357"])  # text is escaped: no bare '&'
    return "|".join(["ERR", "^".join([segment, sequence, position, coded])])


def _at_least(version: str, minimum: tuple[int, int]) -> bool:
    try:
        numbers = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return True
    return numbers >= minimum
