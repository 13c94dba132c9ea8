"""What the record held for the instances filed before: the ground a staged C-STORE stands on.

Most instances an association brings belong to a study and series the record already holds, of
a patient it already knows: filing one then writes its index row and its audit record, nothing
else. Deciding that inside the writing transaction took the writer five statements and a
savepoint per instance (is the SOP Instance UID new? which Patient? is the series in the
ImagingStudy?). ``ground`` answers from what was read for the instances before (``Known``, a
read of the record on a miss), and ``DicomIngest`` hands the writer a ``records.staging.Staged``
unit: the writer checks in one query per group that what the unit relied on still holds (the
same Patient and ImagingStudy at the same versions, the SOP Instance UID free) and writes the
group's rows together. A unit whose ground moved runs the one-at-a-time unit instead, which
decides again inside the transaction, and its keys are forgotten here: a stale answer costs
time, never a wrong row.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from records import db
from records.service import RecordService
from records.store import Stored

Key = tuple[str, str, str]  # (resource type, identifier system, value)
# (id, version, Series Instance UIDs of an ImagingStudy) of the live resource, or None
Found = tuple[str, int, frozenset[str]] | None
LIMIT = 4096  # keys remembered; past that, everything is forgotten and read again


@dataclass(frozen=True)
class Ground:
    patient_id: str
    study_id: str
    expect: dict[Key, tuple[str, int] | None]  # what the writer checks (``Staged.expect``)


class Known:
    """Identifier key -> the live resource it gave when last read (or nothing), for this
    process's filings; read from the record on a miss."""

    def __init__(self, records: RecordService) -> None:
        self.records = records
        self._found: dict[Key, Found] = {}
        self._lock = threading.Lock()

    def lookup(self, keys: list[Key]) -> dict[Key, Found]:
        with self._lock:
            out = {k: self._found[k] for k in keys if k in self._found}
        missing = [k for k in keys if k not in out]
        if missing:
            with db.reader(self.records.engine).connect() as conn:
                found = self.records.find_by_identifiers(conn, missing)
            read = {k: _found(k, found.get(k)) for k in missing}
            with self._lock:
                if len(self._found) + len(read) > LIMIT:
                    self._found.clear()
                self._found.update(read)
            out.update(read)
        return out

    def forget(self, keys: list[Key]) -> None:
        with self._lock:
            for key in keys:
                self._found.pop(key, None)


def series_uids(study: Stored) -> frozenset[str]:
    """The Series Instance UIDs an ImagingStudy lists."""
    return frozenset(s.get("uid") for s in study.json().get("series", []))


def _found(key: Key, stored: Stored | None) -> Found:
    if stored is None:
        return None
    series = series_uids(stored) if key[0] == "ImagingStudy" else frozenset()
    return stored.res_id, stored.version, series


def ground(known: Known, patient_keys: list[Key], study_key: Key, series_uid: str) -> Ground | None:
    """The Patient (the first of ``patient_keys``, strongest first, that gives one) and the
    ImagingStudy an instance files under, when the record holds both and the study its series;
    else None (the one-at-a-time unit decides, and creates what is missing: the keys are read
    again next time)."""
    found = known.lookup([*patient_keys, study_key])
    patient = next((found[k] for k in patient_keys if found[k] is not None), None)
    study = found[study_key]
    if patient is None or study is None or series_uid not in study[2]:
        # the one-at-a-time unit is about to create what was missing: read it again next time
        known.forget([*patient_keys, study_key])
        return None
    expect = {k: (f[0], f[1]) if f is not None else None for k, f in found.items()}
    return Ground(patient[0], study[0], expect)
