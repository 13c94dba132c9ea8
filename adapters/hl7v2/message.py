"""A lazy HL7 v2 parser for the ingest hot path.

Segments are split into fields once; components, repetitions and escapes are only worked out
for the fields a mapping reads. Every field read is remembered, so after mapping the ingest can
name each non-empty field and each segment that was *not* mapped (nothing silently dropped).

Why not hl7apy on the hot path: measured here, hl7apy's ``parse_message`` handles ~55 ten-segment
ORU^R01 a second and python-hl7 ~1,100; splitting on separators handles ~185,000. The mappings
need no more than that (see docs/hl7.md and bench/hl7_ingest).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from adapters.hl7v2 import charsets
from adapters.hl7v2.errors import (
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE,
    TABLE_VALUE_NOT_FOUND,
    Hl7Error,
    Location,
)
from adapters.hl7v2.escape import unescape

DEFAULT_SEPS = "|^~\\&"
# Segments whose field 1 is a Set ID: a sequence number, structure rather than content.
SET_ID_SEGMENTS = {
    "PID",
    "PV1",
    "OBR",
    "OBX",
    "NTE",
    "NK1",
    "AL1",
    "DG1",
    "PR1",
    "IN1",
    "SPM",
    "TQ1",
    "AIS",
    "AIG",
    "AIL",
    "AIP",
    "RGS",
    "TXA",
    "GT1",
    "ROL",
    "FT1",
}


@dataclass
class Segment:
    name: str
    fields: list[str]  # fields[n] is field n (MSH: fields[1] is the field separator)
    sequence: int  # 1-based position in the message
    # the message's separators, codec and set of fields read, shared with it: a segment holds
    # no reference back to its message, so a parsed message is freed as soon as it is dropped
    # (a cycle would leave its ~600 objects to the garbage collector)
    seps: str = field(repr=False)
    codec: str = field(repr=False)
    accessed: set[tuple[int, int]] = field(repr=False)
    _reps: dict[int, list[list[list[str]]]] = field(default_factory=dict, repr=False)
    _comps: dict[tuple[int, int], list[str]] = field(default_factory=dict, repr=False)

    def raw(self, n: int) -> str:
        """Field n as it stands, escapes and all."""
        self.accessed.add((self.sequence, n))
        return self.fields[n] if n < len(self.fields) else ""

    def reps(self, n: int) -> list[list[list[str]]]:
        """Repetitions -> components -> subcomponents of field n, unescaped (worked out once).
        An empty repetition is kept as [['']] (in ``A~~C`` repetition 1 is empty, 2 is C)."""
        cached = self._reps.get(n)
        if cached is None:
            return self._split(n)
        self.accessed.add((self.sequence, n))
        return cached

    def _split(self, n: int) -> list[list[list[str]]]:
        self.accessed.add((self.sequence, n))
        raw = self.fields[n] if n < len(self.fields) else ""
        if not raw or raw == '""':
            self._reps[n] = []
            return []
        seps = self.seps
        rep_sep, comp_sep, esc, sub_sep = seps[2], seps[1], seps[3], seps[4]
        if not (comp_sep in raw or rep_sep in raw or sub_sep in raw or esc in raw):
            result = [[[raw]]]  # most fields: one plain value (nothing to split or unescape)
            self._reps[n] = result
            return result
        parts = [raw] if self.name == "MSH" and n == 2 else raw.split(rep_sep)
        if not any(parts):  # only repetition separators: as empty as an empty field
            self._reps[n] = []
            return []
        # an empty repetition stays, as [['']], so that repetition k is always the k-th sent
        if esc in raw:
            codec = self.codec
            result = [
                [
                    [unescape(s, seps, codec) for s in comp.split(sub_sep)]
                    for comp in rep.split(comp_sep)
                ]
                for rep in parts
            ]
        else:
            result = [[comp.split(sub_sep) for comp in rep.split(comp_sep)] for rep in parts]
        self._reps[n] = result
        return result

    def components(self, n: int, rep: int = 0) -> list[str]:
        """Components of one repetition of field n (subcomponents joined back with '&')."""
        return list(self._components(n, rep))  # a copy: callers may extend it

    def _components(self, n: int, rep: int) -> list[str]:
        cached = self._comps.get((n, rep))
        if cached is not None:
            self.accessed.add((self.sequence, n))
            return cached
        reps = self._reps.get(n)
        if reps is None:
            reps = self._split(n)
        else:
            self.accessed.add((self.sequence, n))
        if rep >= len(reps):
            comps: list[str] = []
        else:
            sub = self.seps[4]
            comps = [c[0] if len(c) == 1 else sub.join(c) for c in reps[rep]]
        self._comps[(n, rep)] = comps
        return comps

    def value(self, n: int, component: int = 1, rep: int = 0) -> str:
        comps = self._comps.get((n, rep))
        if comps is None:
            comps = self._components(n, rep)
        else:
            self.accessed.add((self.sequence, n))
        return comps[component - 1] if component - 1 < len(comps) else ""

    def where(self, n: int | None = None, component: int | None = None) -> Location:
        return Location(self.name, self.sequence, n, component)

    def require(self, n: int, what: str) -> str:
        text = self.value(n)
        if not text:
            raise Hl7Error(f"{what} is required", self.where(n), REQUIRED_FIELD_MISSING)
        return text


@dataclass
class Message:
    raw: bytes
    text: str
    codec: str
    seps: str
    segments: list[Segment] = field(default_factory=list)
    accessed: set[tuple[int, int]] = field(default_factory=set)
    touched_segments: set[int] = field(default_factory=set)
    charset_warning: str | None = None

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def unescape(self, text: str) -> str:
        return unescape(text, self.seps, self.codec)

    def all(self, name: str) -> list[Segment]:
        found = [s for s in self.segments if s.name == name]
        self.touched_segments.update(s.sequence for s in found)
        return found

    def first(self, name: str) -> Segment | None:
        found = self.all(name)
        return found[0] if found else None

    def mark(self, segment: Segment) -> None:
        self.touched_segments.add(segment.sequence)

    def groups(self, head: str, members: set[str]) -> Iterator[tuple[Segment, list[Segment]]]:
        """Each ``head`` segment with the member segments that follow it (e.g. OBR + OBX/NTE)."""
        current: Segment | None = None
        following: list[Segment] = []
        for seg in self.segments:
            if seg.name == head:
                if current is not None:
                    yield current, following
                current, following = seg, []
                self.touched_segments.add(seg.sequence)
            elif current is not None and seg.name in members:
                following.append(seg)
                self.touched_segments.add(seg.sequence)
            elif current is not None and seg.name not in members:
                yield current, following
                current, following = None, []
        if current is not None:
            yield current, following

    @property
    def message_type(self) -> str:
        return f"{self.msh.value(9, 1)}^{self.msh.value(9, 2)}".rstrip("^")

    def unmapped(self) -> list[str]:
        """What the mapping did not read: whole segments, then non-empty fields."""
        out: list[str] = []
        for seg in self.segments:
            if seg.name.startswith("Z"):
                where = f"{seg.name} (segment {seg.sequence})"
                out.append(f"{where}: Z-segment kept in the archive, not mapped")
                continue
            if seg.sequence not in self.touched_segments and seg.name != "MSH":
                out.append(f"{seg.name} (segment {seg.sequence}): segment not mapped")
                continue
            start = 3 if seg.name == "MSH" else (2 if seg.name in SET_ID_SEGMENTS else 1)
            for n in range(start, len(seg.fields)):
                value = seg.fields[n]
                if value and value != '""' and (seg.sequence, n) not in self.accessed:
                    out.append(f"{seg.name}-{n} (segment {seg.sequence}): field not mapped")
        return out


def split_frame(raw: bytes) -> list[bytes]:
    """Segments of a message as bytes; \\r is the terminator, \\n and \\r\\n are tolerated.
    (A CR or LF byte never occurs inside a multi-byte GB 18030 or UTF-8 character.)"""
    normal = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return [s for s in normal.split(b"\r") if s.strip()]


def parse(raw: bytes, *, default_codec: str | None = None) -> Message:
    """Parse one message. Raises Hl7Error naming the segment and field when it cannot."""
    lines = split_frame(raw)
    if not lines:
        raise Hl7Error("the message is empty", Location("MSH"), SEGMENT_SEQUENCE, reject=True)
    head = lines[0].lstrip()
    if not head.startswith(b"MSH") or len(head) < 8:
        shown = head[:3].decode("ascii", "replace")
        raise Hl7Error(
            f"a message must start with an MSH segment, found '{shown}'",
            Location("MSH"),
            SEGMENT_SEQUENCE,
            reject=True,
        )
    seps = head[3:8].decode("latin-1")
    if len(set(seps)) != 5 or any(ch.isalnum() or ch.isspace() for ch in seps):
        raise Hl7Error(
            f"MSH-1/MSH-2 encoding characters '{seps}' are not five distinct separators",
            Location("MSH", 1, 2),
            REQUIRED_FIELD_MISSING,
            reject=True,
        )
    lines[0] = head  # whitespace before MSH is tolerated, and not part of segment 1
    codec, warning, text = _decode(head, b"\r".join(lines), seps, default_codec)
    message = Message(raw=raw, text=text, codec=codec, seps=seps, charset_warning=warning)
    for sequence, line in enumerate(text.split("\r"), start=1):
        line = line.strip("\n")
        name = line[:3]
        if len(name) != 3 or not name.isalnum() or (len(line) > 3 and line[3] != seps[0]):
            raise Hl7Error(
                f"segment {sequence} does not start with a three-character segment name",
                Location(name or "?", sequence),
                SEGMENT_SEQUENCE,
            )
        if name == "MSH":
            fields = ["MSH", seps[0], *line[4:].split(seps[0])]
        else:
            fields = line.split(seps[0])
        message.segments.append(Segment(name, fields, sequence, seps, codec, message.accessed))
    message.touched_segments.add(1)
    return message


# How the MSH bytes are read to find MSH-18 before the character set is known. Latin-1 reads
# any byte and is exact for ASCII, Latin-1 and UTF-8 (whose multi-byte characters never contain
# an ASCII byte); a GBK/GB 18030 (or Big5) character can have '|' (0x7C) or '\\' (0x5C) as its
# second byte, so when the Latin-1 reading does not hold up, MSH is read again as GB 18030
# (which pairs Big5 bytes the same way), then as UTF-8.
_MSH_READERS = ("latin-1", "gb18030", "utf-8")


def _decode(
    head: bytes, body: bytes, seps: str, default_codec: str | None
) -> tuple[str, str | None, str]:
    """The codec of a message, a warning about it, and the decoded text.

    A reading of MSH-18 is accepted only when the message decodes with the codec it names and
    the decoded MSH names that codec again (or one decoded the same way), so a field shifted by
    a GBK second byte 0x7C cannot pick the character set. An MSH-18 that no reading makes
    sense of is refused, naming MSH-18.
    """
    unknown: str | None = None
    failure: tuple[str, int] | None = None  # the first codec the bytes were not, and where
    tried: set[str | None] = set()  # a codec decodes the same way whichever reading named it
    for reader in _MSH_READERS:
        try:
            declared = _msh18(head.decode(reader), seps)
        except UnicodeDecodeError:
            continue
        try:
            codec = charsets.codec_for(declared)
        except KeyError:
            unknown = declared
            continue
        if codec in tried:
            continue
        tried.add(codec)
        warning = None
        if codec is None:
            codec, warning = _undeclared(default_codec, body)
        try:
            text = charsets.decode(body, codec)
        except UnicodeDecodeError as exc:
            failure = failure or (codec, exc.start)
            continue
        if head.isascii():  # every codec here reads ASCII as ASCII: nothing can shift
            own_name = declared
        else:
            end = text.find("\r")
            own_name = _msh18(text if end < 0 else text[:end], seps)
        try:
            own = charsets.codec_for(own_name)
        except KeyError:
            unknown = own_name
            continue
        if own is None:
            if not declared.strip():
                return codec, warning, text
        elif charsets.decoder(own) == charsets.decoder(codec):
            return own, None, text
    if failure is not None:
        codec, start = failure
        raise Hl7Error(
            f"the bytes are not valid {codec} (MSH-18 declares it) at byte {start}",
            Location("MSH", 1, 18),
            reject=True,
        )
    if unknown is None:  # every reading named a known character set the text then denied
        raise Hl7Error(
            "the character set could not be told: MSH-18 reads differently in each candidate",
            Location("MSH", 1, 18),
            TABLE_VALUE_NOT_FOUND,
            reject=True,
        )
    raise Hl7Error(
        f"character set '{unknown}' is not supported; use one of: " + ", ".join(charsets.known()),
        Location("MSH", 1, 18),
        TABLE_VALUE_NOT_FOUND,
        reject=True,
    )


def _msh18(head: str, seps: str) -> str:
    """MSH-18 as written in an MSH line; it may repeat, and the first is the message's."""
    fields = head.split(seps[0])
    declared = fields[17] if len(fields) > 17 else ""
    return declared.split(seps[2])[0]


def _undeclared(default_codec: str | None, body: bytes) -> tuple[str, str | None]:
    """The codec of a message with an empty MSH-18: the sender's configured one, else UTF-8
    when the bytes are UTF-8, else GB 18030 (with a warning)."""
    if default_codec:
        return default_codec, None
    try:
        body.decode("utf-8")
        return "utf-8", None
    except UnicodeDecodeError:
        return "gb18030", "MSH-18 is empty and the bytes are not UTF-8: decoded as GB 18030"
