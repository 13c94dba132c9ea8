"""DICOMweb (PS3.18) without HTTP: what the /dicomweb router needs to speak the standard.

- QIDO-RS query parameters into a ``dicom.query.Query`` and matches into DICOM JSON (F.2) with
  their RetrieveURL;
- multipart/related bodies: written part by part for WADO-RS (a study of a thousand instances is
  streamed, never held), read part by part into files for STOW-RS;
- Accept headers: which media type and transfer syntax the client takes;
- frames as the client wants them (native pixels, or the stored compressed frame);
- the STOW-RS response (Referenced and Failed SOP Sequences).
"""

from __future__ import annotations

import io
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import UID
from python_multipart.multipart import MultipartParser, parse_options_header

from dicom import query
from dicom.charsets import PersonName
from dicom.query import Match, Query, QueryError

CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"  # retired; pydicom does not convert it to little endian
CHUNK = 1024 * 1024
# the media type of a compressed frame, by transfer syntax (PS3.18 Table 8.7.3-2)
FRAME_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


class NotAcceptable(ValueError):
    """The client accepts nothing we can send."""


# -- QIDO-RS -------------------------------------------------------------------------------------


def qido_query(
    level: str,
    params: Iterable[tuple[str, str]],
    *,
    study: str | None = None,
    series: str | None = None,
    max_limit: int = 1000,
) -> Query:
    """The query of a QIDO-RS request (PS3.18 8.3.4): matching keys by keyword or tag,
    ``includefield`` (repeated or comma separated, or ``all``), ``fuzzymatching``, ``limit``
    and ``offset``; the study and series of the URL path as keys."""
    keys: dict[str, str] = {}
    wanted: list[str] = []
    everything = fuzzy = False
    limit: int | None = max_limit
    offset = 0
    for name, value in params:
        if name == "includefield":
            for field in filter(None, (f.strip() for f in value.split(","))):
                if field == "all":
                    everything = True
                else:
                    wanted.append(query.keyword(field.split(".")[0]))
        elif name == "fuzzymatching":
            fuzzy = value.strip().lower() == "true"
        elif name == "limit":
            limit = min(_natural(name, value), max_limit)
        elif name == "offset":
            offset = _natural(name, value)
        elif name.startswith("_"):
            continue  # cache busters and the like
        else:
            keys[query.keyword(name)] = value
    if study:
        keys["StudyInstanceUID"] = study
    if series:
        keys["SeriesInstanceUID"] = series
    return Query(level, keys, wanted, everything, fuzzy, limit, offset)


def _natural(name: str, value: str) -> int:
    if not value.strip().isdigit():
        raise QueryError(f"{name} must be a whole number, not {value!r}")
    return int(value)


def match_json(match: Match, level: str, base: str) -> dict[str, Any]:
    """One QIDO-RS answer as DICOM JSON, with the RetrieveURL of what it describes."""
    out: dict[str, Any] = dict(match.elements)
    for keyword, value in match.values.items():
        tag = query.tag_of(keyword)
        out[tag] = element_json(keyword, value)
    url = retrieve_url(base, level, match.values)
    if url:
        out["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(out.items()))


def element_json(keyword: str, value: Any) -> dict[str, Any]:
    vr = query.vr(keyword)
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [person_name_json(str(v)) for v in values]}
    return {"vr": vr, "Value": values}


def person_name_json(value: str) -> dict[str, str]:
    """``Wang^XiaoDong=王^小东`` -> {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"}."""
    name = PersonName.parse(value)
    groups = {
        "Alphabetic": name.alphabetic,
        "Ideographic": name.ideographic,
        "Phonetic": name.phonetic,
    }
    return {group: text for group, text in groups.items() if text}


def retrieve_url(base: str, level: str, values: dict[str, Any]) -> str | None:
    study = values.get("StudyInstanceUID")
    if level == "PATIENT" or not study:
        return None
    url = f"{base}/studies/{study}"
    if level in ("SERIES", "IMAGE") and values.get("SeriesInstanceUID"):
        url += f"/series/{values['SeriesInstanceUID']}"
        if level == "IMAGE" and values.get("SOPInstanceUID"):
            url += f"/instances/{values['SOPInstanceUID']}"
    return url


# -- Accept --------------------------------------------------------------------------------------


ANY = "*"  # transfer-syntax=*: as stored


@dataclass(frozen=True)
class Accepted:
    media_type: str  # of the parts (multipart) or of the whole body
    transfer_syntax: str | None  # None: not said (PS3.18 8.7.3.5.2: Explicit VR Little Endian)
    multipart: bool

    @property
    def syntax(self) -> str:
        """The transfer syntax asked for: a UID, or ``ANY``."""
        return self.transfer_syntax or EXPLICIT_LE


def accepted(header: str | None, default: str, *, offer: Iterable[str]) -> list[Accepted]:
    """The acceptable forms named by an Accept header, in the client's order (quality values
    ignored), among the media types we ``offer``; the default when nothing is said."""
    offered = set(offer)
    found: list[Accepted] = []
    for item in _split_accept(header or ""):
        media, options = parse_options_header(item)
        media_type = media.decode().lower()
        opts = {k.decode().lower(): v.decode() for k, v in options.items()}
        syntax = opts.get("transfer-syntax")
        if media_type == "multipart/related":
            part = opts.get("type", default).lower()
            if part in ("*/*", "*"):
                part = default
            if part in offered:
                found.append(Accepted(part, syntax, True))
        elif media_type in offered:
            found.append(Accepted(media_type, syntax, False))
        elif media_type in ("*/*", "multipart/*"):
            found.append(Accepted(default, syntax, True))
    if not header:
        found.append(Accepted(default, None, True))
    if not found:
        raise NotAcceptable(
            f"none of the accepted media types can be sent; this resource offers "
            f"{', '.join(sorted(offered))}"
        )
    return found


def _split_accept(header: str) -> list[str]:
    """Split on commas that are not inside quotes."""
    return [p.strip() for p in re.findall(r'(?:[^,"]|"[^"]*")+', header) if p.strip()]


# -- multipart/related -----------------------------------------------------------------------------


@dataclass
class Part:
    content_type: str
    chunks: Callable[[], Iterator[bytes]]  # called when the part is written


def new_boundary() -> str:
    return f"yilian-{secrets.token_hex(12)}"


def multipart_body(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """A multipart/related body written part by part."""
    for part in parts:
        yield f"--{boundary}\r\nContent-Type: {part.content_type}\r\n\r\n".encode()
        yield from part.chunks()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def multipart_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    syntax = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    return f'multipart/related; type="{part_type}"{syntax}; boundary={boundary}'


class PartReader:
    """A multipart/related request body split into files as it arrives (a 1 GB part never
    sits in memory): ``write`` each chunk, then ``finish`` -> [(part's media type, file)]."""

    def __init__(self, content_type: str, folder: Path) -> None:
        media, options = parse_options_header(content_type)
        if media.decode().lower() != "multipart/related" or b"boundary" not in options:
            raise ValueError("the body must be multipart/related with a boundary")
        self.folder = folder
        self.parts: list[tuple[str, Path]] = []
        self._headers: dict[str, str] = {}
        self._name: list[bytes] = []
        self._value: list[bytes] = []
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        callbacks: Any = {
            "on_part_begin": self._headers.clear,
            "on_header_field": lambda d, s, e: self._name.append(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.append(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._open,
            "on_part_data": self._data,
            "on_part_end": self._close,
        }
        self._parser = MultipartParser(options[b"boundary"], callbacks)

    def _header_end(self) -> None:
        name = b"".join(self._name).decode("latin-1").lower()
        self._headers[name] = b"".join(self._value).decode("latin-1")
        self._name.clear()
        self._value.clear()

    def _open(self) -> None:
        self._path = self.folder / f"stow-{secrets.token_hex(8)}.part"
        self._file = open(self._path, "wb")  # noqa: SIM115 - closed at the part's end

    def _data(self, data: bytes, start: int, end: int) -> None:
        assert self._file is not None
        self._file.write(data[start:end])

    def _close(self) -> None:
        assert self._file is not None and self._path is not None
        self._file.close()
        media = self._headers.get("content-type", "application/dicom")
        self.parts.append((media.split(";")[0].strip().lower(), self._path))
        self._file = None

    def write(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def finish(self) -> list[tuple[str, Path]]:
        self._parser.finalize()
        return self.parts

    def discard(self) -> None:
        """Remove every file made (after a failure, or once the parts are filed)."""
        if self._file is not None:
            self._file.close()
        for _, path in self.parts:
            path.unlink(missing_ok=True)
        if self._path is not None:
            self._path.unlink(missing_ok=True)


# -- frames ----------------------------------------------------------------------------------------


def frame_numbers(text: str, available: int) -> list[int]:
    """``1,3`` -> [1, 3] (1-based, as in the URL); each must exist, each is sent once."""
    numbers: list[int] = []
    for item in text.split(","):
        if not item.strip().isdigit() or not 1 <= int(item) <= available:
            raise QueryError(f"frame {item.strip()!r} does not exist; the instance has {available}")
        if int(item) not in numbers:
            numbers.append(int(item))
    return numbers


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def frame_bytes(ds: Dataset, number: int, media_type: str) -> tuple[str, bytes]:
    """Frame ``number`` (1-based) as (content type, bytes): the stored compressed frame when the
    client takes its media type, else native little-endian pixels."""
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if syntax.is_encapsulated and media_type == FRAME_TYPES.get(syntax):
        frames = generate_frames(ds.PixelData, number_of_frames=frame_count(ds))
        for n, data in enumerate(frames, start=1):
            if n == number:
                return f"{media_type}; transfer-syntax={syntax}", data
    if not syntax.is_encapsulated:
        size = _frame_size(ds)
        data = bytes(ds.PixelData[(number - 1) * size : number * size])
    else:
        array = pixel_array(ds, index=number - 1, raw=True)
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return f"application/octet-stream; transfer-syntax={EXPLICIT_LE}", data


def _frame_size(ds: Dataset) -> int:
    bits = int(ds.BitsAllocated)
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    return (pixels * bits + 7) // 8


# -- STOW-RS ---------------------------------------------------------------------------------------


def stow_response(base: str, stored: list[dict[str, Any]], failed: list[dict[str, Any]]) -> dict:  # type: ignore[type-arg]
    """PS3.18 10.5.3: the instances stored (with their RetrieveURL) and those not, each failure
    with its reason code. ``stored``/``failed``: dicts of sop_class, sop_uid, study_uid, series_uid,
    status, reason."""
    out: dict[str, Any] = {}
    studies = {s["study_uid"] for s in stored if s.get("study_uid")}
    if len(studies) == 1:
        out["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{studies.pop()}"]}
    if failed:
        out["00081198"] = {"vr": "SQ", "Value": [_sop_item(f, with_reason=True) for f in failed]}
    if stored:
        items = []
        for s in stored:
            item = _sop_item(s, with_reason=False)
            keys = {
                "StudyInstanceUID": s["study_uid"],
                "SeriesInstanceUID": s["series_uid"],
                "SOPInstanceUID": s["sop_uid"],
            }
            item["00081190"] = {"vr": "UR", "Value": [retrieve_url(base, "IMAGE", keys)]}
            items.append(item)
        out["00081199"] = {"vr": "SQ", "Value": items}
    return out


def _sop_item(found: dict[str, Any], *, with_reason: bool) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if found.get("sop_class"):
        item["00081150"] = {"vr": "UI", "Value": [found["sop_class"]]}
    if found.get("sop_uid"):
        item["00081155"] = {"vr": "UI", "Value": [found["sop_uid"]]}
    if with_reason:
        item["00081197"] = {"vr": "US", "Value": [found["status"]]}
        if found.get("reason"):
            item["00090010"] = {"vr": "LO", "Value": ["YILIAN"]}  # private creator
            item["00091001"] = {"vr": "LO", "Value": [str(found["reason"])[:64]]}
    return item


def transcoded(ds: Dataset, syntax: str) -> bytes:
    """The instance as a Part 10 file in ``syntax`` (only Explicit VR Little Endian: a client
    that takes no compressed form gets native pixels)."""
    if syntax != EXPLICIT_LE:
        raise NotAcceptable(f"instances are sent as stored or as {EXPLICIT_LE}, not {syntax}")
    if UID(str(ds.file_meta.TransferSyntaxUID)).is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buffer.getvalue()
