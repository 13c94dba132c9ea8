"""Ids for new records: UUID version 7 (RFC 9562), time-ordered.

A random (version 4) id lands every new row on a random page of each index keyed by it (the
resource and version keys, the search tables' owner indexes, references to new resources): a
message of ten resources dirtied some seventy pages, each written to the database's log on
commit. Ids that grow with time append to the right edge of those indexes instead, so the rows
of many messages share pages. The first 48 bits are milliseconds since the epoch (the same
instant ``meta.lastUpdated`` already shows); the remaining 74 bits are random, so ids stay
unguessable. ``uuid.uuid7`` arrives in Python 3.14; this is the same layout.
"""

from __future__ import annotations

import os
import time
import uuid

_VERSION = 7 << 76
_VARIANT = 0b10 << 62


def new_uuid7() -> uuid.UUID:
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10))  # 80 bits, 74 used
    rand_a = (rand >> 62) & 0xFFF  # 12 bits
    rand_b = rand & ((1 << 62) - 1)  # 62 bits
    return uuid.UUID(
        int=(millis & ((1 << 48) - 1)) << 80 | _VERSION | rand_a << 64 | _VARIANT | rand_b
    )


def new_id() -> str:
    """A new record id: a version 7 UUID in its usual text form (a valid FHIR id)."""
    return str(new_uuid7())
