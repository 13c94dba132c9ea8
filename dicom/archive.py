"""Reading the image archive on behalf of someone: what they may see, and the audit record of
what they saw. DICOMweb (and any other reader with a principal) goes through here, so the
access rules and the audit are applied once, as for the FHIR API.

Nothing outside the principal's scope exists for them: an invisible study answers 404 like an
absent one. Each search or retrieve writes one audit event per patient touched, naming the
studies by their UID (``urn:oid:...``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom import Dataset, dcmread
from sqlalchemy import ColumnElement

from dicom import charsets, query
from dicom.index import Headers
from dicom.query import Match, Query
from dicom.storage import ObjectStore
from records import db
from records.audit_log import Event
from records.errors import FhirError, NotFound, StorageFault
from records.service import RecordService
from security.access import Action
from security.principal import Principal

log = logging.getLogger(__name__)


class Archive:
    def __init__(self, records: RecordService, store: ObjectStore) -> None:
        self.records = records
        self.store = store
        self.headers = Headers(records.engine, store)

    def visible(
        self, who: Principal, action: str, access: Action = Action.SEARCH
    ) -> ColumnElement[bool] | None:
        """The instances ``who`` may see; a refusal by the policy is audited and raised."""
        try:
            return query.visible_clause(self.records.scope(who, "ImagingStudy", access))
        except FhirError as refused:
            self.records.audit(who, Event(action, outcome="refused", detail=refused.diagnostics))
            raise

    def search(self, who: Principal, q: Query) -> list[Match]:
        visible = self.visible(who, "dicom-search")
        with db.reader(self.records.engine).connect() as conn:
            found = query.search(conn, q, visible, self.headers)
        touched = [(_what(m), m.patient) for m in found]
        event = Event.touching("dicom-search", touched) if touched else Event("dicom-search")
        self.records.audit(who, event)
        return found

    def instances(
        self,
        who: Principal,
        action: str,
        *,
        study: str | None = None,
        series: str | None = None,
        sop: str | None = None,
    ) -> list[Any]:
        """The index rows of the instances named, visible to ``who``: NotFound (audited) if
        none; a StorageFault if the object of one is missing from the store. The caller audits
        what it then sends with ``record``."""
        visible = self.visible(who, action, Action.READ)
        with db.reader(self.records.engine).connect() as conn:
            rows = query.instances(conn, study=study, series=series, sop=sop, visible=visible)
        if not rows:
            named = sop or series or study
            missing = NotFound(f"no instance of {named} is known")
            self.records.audit(who, Event(action, outcome="refused", detail=missing.diagnostics))
            raise missing
        lost = [r.sop_uid for r in rows if not self.store.exists(r.storage_key)]
        if lost:
            log.error("%d indexed objects are missing from the object store", len(lost))
            raise StorageFault(
                f"the stored object of {len(lost)} instance(s) is missing; the operator's log "
                "says more"
            )
        return rows

    def record(self, who: Principal, action: str, rows: list[Any]) -> None:
        """The audit record of instances sent to ``who``: one per patient, naming the studies."""
        studies = {r.study_uid: r.patient_ref for r in rows}
        touched = [(f"urn:oid:{s}", p) for s, p in studies.items()]
        self.records.audit(who, Event.touching(action, touched))

    def metadata(self, who: Principal, **named: str | None) -> list[dict[str, Any]]:
        rows = self.instances(who, "dicom-metadata", **named)
        found = self.headers([r.sop_uid for r in rows])
        self.record(who, "dicom-metadata", rows)
        return [found.get(r.sop_uid, {}) for r in rows]

    def dataset(self, row: Any) -> Dataset:
        """The stored object of an index row, its text decoded right (``charsets``)."""
        return charsets.fix_dataset(dcmread(self.store.path(row.storage_key)))

    def chunks(self, row: Any) -> Iterator[bytes]:
        with self.store.open(row.storage_key) as f:
            yield from iter(lambda: f.read(1024 * 1024), b"")


def _what(match: Match) -> str:
    study = match.values.get("StudyInstanceUID")
    return f"urn:oid:{study}" if study else f"Patient/{match.patient}"
