"""The DICOM index: rows of ``records.schema.dicom_instance`` made from a dataset's header.

One row per instance, with the patient/study/series attributes that C-FIND and QIDO-RS match on
copied out (text decoded by ``dicom.charsets``, Chinese as Unicode). The whole header as DICOM
JSON (without bulk data) is made the first time someone asks for it and then kept in the row
(``Headers``): making it costs 5 ms of pydicom conversion, more than the rest of a C-STORE's
filing, and many instances are never asked for their metadata.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.tag import Tag
from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError

from dicom import charsets, checksum
from dicom.header import Header
from dicom.storage import ObjectStore
from records import bulk
from records.schema import dicom_instance

log = logging.getLogger(__name__)

# elements left out of the stored header: bulk data a metadata answer points to instead
BULK = {Tag(0x7FE00010), Tag(0x54001010), Tag(0x7FE00008), Tag(0x7FE00009)}  # pixels, waveform


def header_json(ds: Dataset) -> str:
    """The header as DICOM JSON (PS3.18 F.2) without bulk data."""

    def skip(element: Any) -> str:
        return ""  # bulk data elements are dropped below

    out = ds.to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=skip)
    for tag in BULK:
        out.pop(f"{tag:08X}", None)
    for key in [k for k, v in out.items() if isinstance(v, dict) and v.get("BulkDataURI") == ""]:
        out.pop(key)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def row(
    head: Header,
    *,
    storage_key: str,
    size: int,
    digest: str,
    patient_ref: str | None,
    org_id: str | None,
    calling_ae: str | None,
) -> dict[str, Any]:
    """The index row of one instance, from its header (``dicom.header``)."""
    name = charsets.name_of(head["PatientName"])
    referring = charsets.name_of(head["ReferringPhysicianName"])
    return {
        "sop_uid": head["SOPInstanceUID"],
        "sop_class": head["SOPClassUID"],
        "study_uid": head["StudyInstanceUID"],
        "series_uid": head["SeriesInstanceUID"],
        "transfer_syntax": head.transfer_syntax,
        "patient_ref": patient_ref,
        "org_id": org_id,
        "calling_ae": calling_ae,
        "dicom_patient_id": head["PatientID"],
        "issuer": head["IssuerOfPatientID"],
        "patient_name": str(name) if name else None,
        "name_key": charsets.name_key(str(name)) if name else None,
        "birth_date": (head["PatientBirthDate"] or "")[:8] or None,
        "sex": head["PatientSex"],
        "study_date": (head["StudyDate"] or "")[:8] or None,
        "study_time": (head["StudyTime"] or "")[:16] or None,
        "accession": head["AccessionNumber"],
        "study_id": head["StudyID"],
        "study_description": head["StudyDescription"],
        "referring": str(referring) if referring else None,
        "modality": head["Modality"],
        "series_number": head.numbers["SeriesNumber"],
        "series_description": head["SeriesDescription"],
        "body_part": head["BodyPartExamined"],
        "instance_number": head.numbers["InstanceNumber"],
        "frames": head.numbers["NumberOfFrames"] or None,
        "storage_key": storage_key,
        "size": size,
        "digest": digest,
        "digest_alg": checksum.ALGORITHM,
        "received": dt.datetime.now(dt.UTC),
    }


def insert(conn: Connection, values: dict[str, Any]) -> None:
    """One instance's row, through the driver (``records.bulk``: the columns' own conversions,
    without Core's per-statement work, which cost more than SQLite's)."""
    bulk.insert_rows(conn, dicom_instance, [values])


def digest_of(conn: Connection, sop_uid: str) -> tuple[str, str] | None:
    """(algorithm, content digest) of the instance stored under ``sop_uid`` (None: not
    stored); see ``dicom.checksum``."""
    mark = bulk.mark(conn)
    sql = f"SELECT digest_alg, digest FROM dicom_instance WHERE sop_uid = {mark}"
    rows = bulk.fetch_all(conn, sql, (sop_uid,))
    return (str(rows[0][0]), str(rows[0][1])) if rows else None


def study_rows(conn: Connection, study_uid: str) -> list[Any]:
    """Every instance of a study, in series then instance order (without the headers)."""
    columns = [c for c in dicom_instance.c if c.key != "header"]
    return list(
        conn.execute(
            select(*columns)
            .where(dicom_instance.c.study_uid == study_uid)
            .order_by(
                dicom_instance.c.series_number,
                dicom_instance.c.series_uid,
                dicom_instance.c.instance_number,
                dicom_instance.c.sop_uid,
            )
        )
    )


class Headers:
    """Instances' headers as DICOM JSON by SOP Instance UID: from the index row, or made from
    the stored object (and kept in the row) the first time."""

    def __init__(self, engine: Engine, store: ObjectStore) -> None:
        self.engine = engine
        self.store = store

    def __call__(self, sop_uids: list[str]) -> dict[str, dict[str, Any]]:
        c = dicom_instance.c
        out: dict[str, dict[str, Any]] = {}
        missing: dict[str, str] = {}
        with self.engine.connect() as conn:
            for sop_uid, header, key in conn.execute(
                select(c.sop_uid, c.header, c.storage_key).where(c.sop_uid.in_(sop_uids))
            ):
                if header is None:
                    missing[sop_uid] = key
                else:
                    out[sop_uid] = json.loads(header)
        made = {}
        for sop_uid, key in missing.items():
            ds = charsets.fix_dataset(dcmread(self.store.path(key), stop_before_pixels=True))
            made[sop_uid] = header_json(ds)
            out[sop_uid] = json.loads(made[sop_uid])
        if made:
            self._keep(made)
        return out

    def _keep(self, made: dict[str, str]) -> None:
        """Keep the headers made in their rows; only a saving: a busy database is let be."""
        c = dicom_instance.c
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(dicom_instance)
                    .where(c.sop_uid == bindparam("sop"), c.header.is_(None))
                    .values(header=bindparam("text")),
                    [{"sop": sop, "text": text} for sop, text in made.items()],
                )
        except SQLAlchemyError as exc:
            log.info("headers of %d instances not kept: %s", len(made), type(exc).__name__)
