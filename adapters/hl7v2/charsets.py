"""MSH-18 character sets (HL7 table 0211, and the names Chinese systems really send)."""

from __future__ import annotations

_CODECS = {
    "": None,
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "GB 18030-2000": "gb18030",
    "GB18030-2000": "gb18030",
    "GB 18030": "gb18030",
    "GB18030": "gb18030",
    "GBK": "gbk",
    "GB 2312": "gb2312",
    "GB2312": "gb2312",
    "ISO IR58": "gb2312",
    "BIG-5": "big5",
    "BIG5": "big5",
}

# GB 2312 and GBK are subsets of GB 18030: decode with the superset so that a character a
# sender's GBK really used but GB 2312 lacks still comes through.
_DECODE_AS = {"gb2312": "gb18030", "gbk": "gb18030"}


def codec_for(msh18: str) -> str | None:
    """Python codec for an MSH-18 value; None when empty; KeyError when unknown."""
    return _CODECS[msh18.strip().upper()]


def known() -> list[str]:
    return sorted(k for k in _CODECS if k)


def decoder(codec: str) -> str:
    """The codec that really decodes text declared as ``codec`` (GB 2312/GBK: GB 18030)."""
    return _DECODE_AS.get(codec, codec)


def decode(raw: bytes, codec: str) -> str:
    return raw.decode(decoder(codec))


def encode(text: str, codec: str | None) -> bytes:
    return text.encode(_DECODE_AS.get(codec or "utf-8", codec or "utf-8"), errors="replace")
