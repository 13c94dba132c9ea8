"""Refusals of an HL7 v2 message, named by segment and field, with the HL7 table 0357 code."""

from __future__ import annotations

from dataclasses import dataclass

# HL7 table 0357 (message error condition codes)
SEGMENT_SEQUENCE = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION = "203"
UNKNOWN_KEY = "204"
DUPLICATE_KEY = "205"
INTERNAL_ERROR = "207"


@dataclass(frozen=True)
class Location:
    """Segment name, its 1-based position in the message, and field (component) numbers."""

    segment: str
    sequence: int = 1
    field: int | None = None
    component: int | None = None

    def __str__(self) -> str:
        text = self.segment
        if self.field is not None:
            text += f"-{self.field}"
            if self.component is not None:
                text += f".{self.component}"
        return text


class Hl7Error(Exception):
    """The message cannot be accepted as it is. ``reject`` chooses AR over AE."""

    def __init__(
        self,
        text: str,
        where: Location | None = None,
        code: str = DATA_TYPE_ERROR,
        *,
        reject: bool = False,
    ) -> None:
        super().__init__(f"{where}: {text}" if where else text)
        self.text = text
        self.where = where
        self.code = code
        self.reject = reject
