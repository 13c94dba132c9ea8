"""Record ids: RFC 9562 version 7 UUIDs, ordered by time, valid FHIR ids."""

from __future__ import annotations

import re
import time
import uuid

from records import ids

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def test_an_id_is_a_version_7_uuid_carrying_the_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(ids.new_id())
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


def test_ids_made_later_sort_after_earlier_ones() -> None:
    first = [ids.new_id() for _ in range(50)]
    time.sleep(0.002)
    second = [ids.new_id() for _ in range(50)]
    assert max(first) < min(second)


def test_ids_are_unique_and_valid_fhir_ids() -> None:
    made = [ids.new_id() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert all(FHIR_ID.fullmatch(m) for m in made)
