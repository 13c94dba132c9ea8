"""Document content in OBX-5 -> FHIR Attachment (v2-to-FHIR IG: ED[Attachment], and the
OBX[DocumentReference] map for RP and TX/FT values). Shared by ORU (ED values) and MDM."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from adapters.hl7v2.errors import DATA_TYPE_ERROR, Hl7Error
from adapters.hl7v2.mapping import datatypes as dt
from adapters.hl7v2.message import Segment

TEXT_PLAIN = "text/plain; charset=utf-8"
# ED-3 data subtype / RP-4 subtype -> MIME type
MEDIA = {
    "PDF": "application/pdf",
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "XML": "application/xml",
    "RTF": "application/rtf",
    "HTML": "text/html",
    "OCTET-STREAM": "application/octet-stream",
}


# ED-4 encoding (HL7 table 0299): A is no encoding (the data is the text itself), Hex is
# hexadecimal, Base64 is Base64 (RFC 2045). Anything else is refused.
PLAIN_ENCODINGS = {"A", "", "NONE"}


def ed(obx: Segment) -> dict[str, Any] | None:
    """OBX-5 of type ED (source^type^subtype^encoding^data) -> Attachment with Base64 data;
    the OBX-3 text becomes the title."""
    comps = obx.components(5) + [""] * 5
    _source, kind, subtype, encoding, data = comps[:5]
    content_type = MEDIA.get(subtype.upper(), "application/octet-stream")
    scheme = encoding.strip().upper()
    if scheme == "BASE64":
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise Hl7Error(
                "ED data is not valid Base64", obx.where(5, 5), DATA_TYPE_ERROR
            ) from None
    elif scheme == "HEX":
        try:
            raw = bytes.fromhex(data)
        except ValueError:
            raise Hl7Error(
                "ED data is not valid hexadecimal", obx.where(5, 5), DATA_TYPE_ERROR
            ) from None
    elif scheme in PLAIN_ENCODINGS:
        raw = data.encode("utf-8")  # no encoding: the (decoded) text itself
    else:
        raise Hl7Error(
            f"ED encoding '{encoding}' is not supported (Base64, Hex, or A for none)",
            obx.where(5, 4),
            DATA_TYPE_ERROR,
        )
    encoded = base64.b64encode(raw).decode()
    if kind and subtype:
        title = dt.cwe(obx.components(3))
        attachment = {"contentType": content_type, "data": encoded}
        if title and title.get("text"):
            attachment["title"] = title["text"]
        return attachment
    return {"contentType": content_type, "data": encoded}


def rp(obx: Segment) -> dict[str, Any] | None:
    """OBX-5 of type RP (pointer^application^type^subtype) -> Attachment with a url."""
    pointer, _application, _kind, subtype = (obx.components(5) + [""] * 4)[:4]
    if not pointer:
        return None
    attachment: dict[str, Any] = {"url": pointer}
    if subtype.upper() in MEDIA:
        attachment["contentType"] = MEDIA[subtype.upper()]
    return attachment


def text(content: str, title: str | None = None) -> dict[str, Any]:
    """Plain text (TX/FT/ST lines) -> a UTF-8 text/plain Attachment."""
    attachment: dict[str, Any] = {
        "contentType": TEXT_PLAIN,
        "data": base64.b64encode(content.encode("utf-8")).decode(),
    }
    if title:
        attachment["title"] = title
    return attachment
