"""Chinese text out of DICOM, exactly: UTF-8, GB18030, GBK and ISO 2022 IR 58.

pydicom decodes ISO_IR 192, GB18030 and GBK correctly and we use its values as they are. For
ISO 2022 IR 58 (GB2312 designated to G1 by the escape sequence ESC $ ) A, PS3.5 6.1.2.5 and
Annex J) pydicom 3.0.2 maps the term to Python's ``iso_ir_58`` codec, which is EUC-CN and not
ISO 2022: the Chinese characters come out right but the escape sequence stays in the text
(``'Wang^XiaoDong=\\x1b$)A王^\\x1b$)A小东'``). Here such values are decoded again from their raw
bytes (or, when pydicom already decoded them, the escape sequences are removed), so
``decode_text``, ``person_name`` and ``fix_dataset`` give the text a person typed.

Tolerated beyond the standard, because township devices do it: GB2312 bytes without an escape
sequence, and GB2312 bytes after a delimiter that was not followed by a new designation (both
only where Value 1 of Specific Character Set is ASCII, so there is no other reading).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName as DicomPersonName

log = logging.getLogger(__name__)

#: VRs whose values are decoded with Specific Character Set (PS3.5 6.1.2.3).
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
#: VRs that may hold several values separated by a backslash.
MULTI_VALUED_VRS = frozenset({"SH", "LO", "UC", "PN"})
#: Python codecs pydicom gives for "ISO 2022 IR 58" and for CP 1234's "ISO 2022 58".
IR58_CODECS = frozenset({"iso_ir_58", "GB2312"})
#: Value 1 codecs under which every byte >= 0x80 can only be GB2312 (ASCII or GB2312 itself).
ASCII_FIRST = frozenset({"iso8859", "iso_ir_6", "ascii", *IR58_CODECS})
G1_GB2312 = b"\x1b$)A"
G0_ASCII = b"\x1b(B"
#: Characters after which the character set is reset (PS3.5 6.1.2.5.3): CR LF TAB FF, ^ and =.
DELIMITERS = b"\r\n\t\x0c^="

_ESCAPE = re.compile("\x1b[\x20-\x2f]+[\x30-\x7e]")
_ESCAPE_BYTES = re.compile(b"\x1b[\x20-\x2f]+[\x30-\x7e]")
_FRAGMENT = re.compile(rb"^[^\x1b]+|\x1b[^\x1b]*")
_NAME_NOISE = re.compile(r"[\s^=·・•‧]")


@dataclass(frozen=True)
class PersonName:
    """A DICOM person name: three component groups, each "family^given^middle^prefix^suffix"."""

    alphabetic: str = ""
    ideographic: str = ""
    phonetic: str = ""

    @classmethod
    def parse(cls, value: str) -> PersonName:
        groups = [group.strip() for group in value.split("=")] + ["", ""]
        return cls(*groups[:3])

    @property
    def preferred(self) -> str:
        """The ideographic group when present, else the alphabetic (else the phonetic) one."""
        return self.ideographic or self.alphabetic or self.phonetic

    @property
    def components(self) -> list[str]:
        return ([part.strip() for part in self.preferred.split("^")] + [""] * 5)[:5]

    @property
    def family(self) -> str:
        return self.components[0]

    @property
    def given(self) -> str:
        return self.components[1]

    @property
    def text(self) -> str:
        """As people write it: "王小东" for ideographic names, "Wang XiaoDong" otherwise."""
        parts = [part for part in self.components[:3] if part]
        return ("" if self.ideographic else " ").join(parts)

    def __str__(self) -> str:
        return "=".join([self.alphabetic, self.ideographic, self.phonetic]).rstrip("=")


def decode_text(ds: Dataset, keyword: str, codecs: list[str] | None = None) -> str | None:
    """The value of a text element (several values joined by "\\"), or None when absent/empty.
    ``codecs``: ``codecs_of(ds)``, when the caller reads several elements of ``ds``."""
    if keyword not in ds:
        return None
    elem = ds.get_item(keyword)
    encodings = codecs if codecs is not None else codecs_of(ds)
    if _is_ir58(encodings) and _vr(elem) in TEXT_VRS:
        text = _decode_ir58_element(elem, encodings)
    else:
        text = _joined(ds[keyword].value)
    return text or None


def person_name(
    ds: Dataset, keyword: str = "PatientName", codecs: list[str] | None = None
) -> PersonName | None:
    """The (first) person name in ``keyword``, split into its component groups."""
    return name_of(decode_text(ds, keyword, codecs))


def name_of(text: str | None) -> PersonName | None:
    """The (first) person name of a PN value's text (``decode_text``'s reading)."""
    if text is None:
        return None
    name = PersonName.parse(text.split("\\")[0])
    return name if name.preferred else None


def name_key(text: str) -> str:
    """A folded form for matching: NFKC (full-width to half-width), case-folded, without
    spaces, the PN delimiters ^ and =, and the middle dots of transliterated names."""
    return _NAME_NOISE.sub("", unicodedata.normalize("NFKC", text).casefold())


def fix_dataset(ds: Dataset) -> Dataset:
    """Re-decode IR 58 text elements at every level, so ``str(ds.X)`` is right everywhere.

    Elements decoded under other character sets are left untouched (and not even converted).
    """
    _fix(ds, codecs_of(ds))
    return ds


def _fix(ds: Dataset, encodings: list[str]) -> None:
    ir58 = _is_ir58(encodings)
    for _, elem in list(ds.items()):  # as read (raw): nothing converted that need not be
        vr = _vr(elem)
        if vr == "SQ":
            for item in ds[elem.tag].value:
                _fix(item, _own_encodings(item) or encodings)
        elif ir58 and vr in TEXT_VRS and elem.value:
            text = _decode_ir58_element(elem, encodings)
            ds[elem.tag] = DataElement(elem.tag, vr, _as_value(text, vr))


def codecs_of(ds: Dataset) -> list[str]:
    """Python codecs of the dataset's Specific Character Set, inherited in sequence items."""
    own = _own_encodings(ds)
    if own:
        return own
    # pydicom keeps what an item inherits from its parent in this private attribute.
    inherited = ds._character_set
    return [inherited] if isinstance(inherited, str) else list(inherited)


def _own_encodings(ds: Dataset) -> list[str]:
    if "SpecificCharacterSet" not in ds or not ds.SpecificCharacterSet:
        return []
    return convert_encodings(ds.SpecificCharacterSet)


def _is_ir58(encodings: Sequence[str]) -> bool:
    return any(codec in IR58_CODECS for codec in encodings)


def _vr(elem: DataElement | RawDataElement) -> str:
    if elem.VR:
        return str(elem.VR)
    try:
        return str(dictionary_VR(BaseTag(elem.tag)))
    except KeyError:  # private or unknown tag in an implicit VR dataset
        return "UN"


def _decode_ir58_element(elem: DataElement | RawDataElement, encodings: list[str]) -> str:
    value = elem.value
    if isinstance(value, DicomPersonName) and isinstance(value.original_string, bytes):
        value = value.original_string
    if isinstance(value, bytes):
        text = decode_ir58(value, encodings)
    else:  # already decoded by pydicom: right characters, escape sequences left in
        text = _ESCAPE.sub("", _joined(value))
    vr = _vr(elem)
    values = text.split("\\") if vr in MULTI_VALUED_VRS else [text]
    if vr in {"ST", "LT", "UT"}:  # leading spaces are significant
        return "\\".join(v.rstrip("\0 ") for v in values)
    if vr == "PN":  # empty trailing component groups say nothing (as pydicom shows them)
        return "\\".join(v.strip("\0 ").rstrip("=") for v in values)
    return "\\".join(v.strip("\0 ") for v in values)


def decode_ir58(raw: bytes, encodings: Sequence[str]) -> str:
    """Decode bytes under a Specific Character Set that includes ISO 2022 IR 58."""
    first = encodings[0]
    parts = []
    for fragment in _FRAGMENT.findall(raw):
        escape = _ESCAPE_BYTES.match(fragment)
        sequence = escape.group() if escape else b""
        body = fragment[len(sequence) :]
        if sequence == G1_GB2312:
            parts.append(_decode_g1(body, first))
        elif sequence in (b"", G0_ASCII) and first in ASCII_FIRST:
            # ASCII (ESC ( B only designates G0), or GB2312 sent without its escape
            parts.append(_gb2312(body))
        else:
            parts.append(decode_bytes(fragment, list(encodings), set(DELIMITERS)))
    return "".join(parts)


def _decode_g1(body: bytes, first: str) -> str:
    """GB2312 up to the next delimiter; after it, Value 1's character set is active again."""
    if first in ASCII_FIRST:
        return _gb2312(body)
    cut = next((i for i, byte in enumerate(body) if byte in DELIMITERS), len(body))
    return _gb2312(body[:cut]) + body[cut:].decode(first, errors="replace")


def _gb2312(data: bytes) -> str:
    try:
        return data.decode("gb2312")
    except UnicodeDecodeError:
        log.warning("invalid GB2312 bytes in an ISO 2022 IR 58 value (%d bytes)", len(data))
        return data.decode("gb2312", errors="replace")


def _joined(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _as_value(text: str, vr: str) -> str | list[str]:
    if vr in MULTI_VALUED_VRS and "\\" in text:
        return text.split("\\")
    return text
