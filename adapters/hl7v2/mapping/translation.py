"""What a mapping produces: resources to write, how to find an existing one, how they refer to
each other. Pure data: building it needs no database, so it runs outside the writing transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from adapters.hl7v2.errors import UNSUPPORTED_EVENT, Hl7Error, Location
from adapters.hl7v2.message import Message


@dataclass
class Entry:
    key: str  # local key; other entries refer to it as ref(key)
    rtype: str
    body: dict[str, Any]
    # An existing resource carrying any of these identifiers (system, value) is updated instead
    # of a new one being created (the v2 message is the source of truth for what it sends).
    match: list[tuple[str, str]] = field(default_factory=list)
    keep_identifiers: bool = False  # Patient: identifiers the record already has are kept
    create_only_if_new: bool = False  # a reference target we only create when it is missing


@dataclass
class Merge:
    """ADT^A40: the patient found by ``source`` is merged into the one found by ``target``."""

    source: list[tuple[str, str]]
    target_key: str


@dataclass
class Context:
    sender_facility: str  # MSH-4 namespace
    organization: str | None  # the sending Organization's FHIR id, when registered
    default_tz: str = "+08:00"


@dataclass
class Translation:
    message: Message
    entries: list[Entry] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    patient_key: str | None = None
    occurred: str | None = None  # when the event happened (EVN-6/EVN-2, MSH-7 otherwise)

    def add(self, entry: Entry) -> str:
        self.entries.append(entry)
        return entry.key


def new_key() -> str:
    return str(uuid.uuid4())


def ref(key: str) -> dict[str, str]:
    """A reference to another entry of the same translation (resolved when applied)."""
    return {"reference": f"urn:uuid:{key}"}


def check_event(message: Message, supported: Iterable[str]) -> str:
    """The trigger event of MSH-9, or AR (table 0357 code 201) when the mapping has none for it."""
    kind, event = message.msh.value(9, 1).upper(), message.msh.value(9, 2)
    allowed = set(supported)
    if event not in allowed:
        names = ", ".join(f"{kind}^{e}" for e in sorted(allowed) if e)
        raise Hl7Error(
            f"{kind}^{event} is not supported; supported: {names}",
            Location("MSH", 1, 9, 2),
            UNSUPPORTED_EVENT,
            reject=True,
        )
    return event
