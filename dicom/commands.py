"""DIMSE command sets (PS3.7 6.3.1, E.1) and P-DATA-TF framing (PS3.8 9.3.5, E.2), by hand.

The hot paths (``dicom.send`` writing C-STORE requests, ``dicom.lane`` answering them) build and
read these few bytes directly: pynetdicom's general machinery (a pydicom Dataset per command, a
primitive and a PDU object per message) costs more than the rest of a small C-STORE. A command
set is always implicit VR little endian, group 0000, led by its group length.
"""

from __future__ import annotations

import struct

COMMAND = 0x01  # message control header, bit 0: a command fragment (else a dataset fragment)
LAST = 0x02  # bit 1: the message's last fragment
DATASET = 0x00

# Command Field (0000,0100) values
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATASET = 0x0101  # Command Data Set Type (0000,0800): no dataset follows

# elements of group 0000
AFFECTED_SOP_CLASS = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_RESPONDED_TO = 0x0120
PRIORITY = 0x0700
DATASET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE = 0x1000

P_DATA_TF = 0x04


class CommandError(ValueError):
    """A command set that cannot be read."""


def element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, tag, len(value)) + value


def uid(value: str) -> bytes:
    """A UI value, padded to even length with a NUL (PS3.5 6.2)."""
    raw = value.encode("ascii")
    return raw + b"\x00" * (len(raw) % 2)


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def text(value: str) -> bytes:
    """An LO value (Error Comment), at most 64 characters, padded to even length with a space."""
    raw = value.encode("ascii", "replace")[:64]
    return raw + b" " * (len(raw) % 2)


def command_set(elements: list[tuple[int, bytes]]) -> bytes:
    """The elements (tag, encoded value), in ascending tag order, led by the group length."""
    body = b"".join(element(tag, value) for tag, value in elements)
    return element(0x0000, struct.pack("<I", len(body))) + body


def c_store_rq(sop_class: str, sop_instance: str, message_id: int, priority: int) -> bytes:
    """A C-STORE-RQ (PS3.7 9.3.1.1): the elements, and in the order, that pynetdicom's
    ``C_STORE_RQ`` encodes."""
    return command_set(
        [
            (AFFECTED_SOP_CLASS, uid(sop_class)),
            (COMMAND_FIELD, us(C_STORE_RQ)),
            (MESSAGE_ID, us(message_id)),
            (PRIORITY, us(priority)),
            (DATASET_TYPE, us(0x0001)),
            (AFFECTED_SOP_INSTANCE, uid(sop_instance)),
        ]
    )


def c_store_rsp(
    sop_class: str, sop_instance: str, responding_to: int, status: int, comment: str | None
) -> bytes:
    """A C-STORE-RSP (PS3.7 9.3.1.2), with an Error Comment when there is one."""
    elements = [
        (AFFECTED_SOP_CLASS, uid(sop_class)),
        (COMMAND_FIELD, us(C_STORE_RSP)),
        (MESSAGE_ID_RESPONDED_TO, us(responding_to)),
        (DATASET_TYPE, us(NO_DATASET)),
        (STATUS, us(status)),
    ]
    if comment:
        elements.append((ERROR_COMMENT, text(comment)))
    elements.append((AFFECTED_SOP_INSTANCE, uid(sop_instance)))
    return command_set(elements)


def c_echo_rsp(sop_class: str, responding_to: int) -> bytes:
    """A successful C-ECHO-RSP (PS3.7 9.3.5.2)."""
    return command_set(
        [
            (AFFECTED_SOP_CLASS, uid(sop_class)),
            (COMMAND_FIELD, us(C_ECHO_RSP)),
            (MESSAGE_ID_RESPONDED_TO, us(responding_to)),
            (DATASET_TYPE, us(NO_DATASET)),
            (STATUS, us(0x0000)),
        ]
    )


def parse(data: bytes) -> dict[int, bytes]:
    """The elements of a command set, by element number (group 0000 only)."""
    out: dict[int, bytes] = {}
    at, end = 0, len(data)
    while at < end:
        if end - at < 8:
            raise CommandError("the command set ends inside an element header")
        group, tag, length = struct.unpack_from("<HHI", data, at)
        at += 8
        if group != 0x0000 or length > end - at:
            raise CommandError(f"element ({group:04X},{tag:04X}) does not belong in a command set")
        out[tag] = data[at : at + length]
        at += length
    return out


def read_us(elements: dict[int, bytes], tag: int) -> int:
    value = elements.get(tag)
    if value is None or len(value) != 2:
        raise CommandError(f"(0000,{tag:04X}) is missing or not a US value")
    found: int = struct.unpack("<H", value)[0]
    return found


def read_uid(elements: dict[int, bytes], tag: int) -> str:
    value = elements.get(tag, b"").rstrip(b"\x00 ").decode("ascii", "replace")
    if not value:
        raise CommandError(f"(0000,{tag:04X}) is missing")
    return value


def pdv_header(context_id: int, control: int, n: int) -> bytes:
    """The head of a P-DATA-TF PDU holding one PDV of ``n`` bytes of data: the PDU's type and
    length, the item's length, its presentation context and its message control header."""
    return struct.pack(">BBIIBB", P_DATA_TF, 0x00, n + 6, n + 2, context_id, control)


def p_data_tf(context_id: int, control: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU with one PDV carrying all of ``data``."""
    return pdv_header(context_id, control, len(data)) + data
