"""One core call files a DICOM object, whoever brought it (C-STORE, STOW-RS): the object kept as
received, its index row, the resident's Patient (through identity matching), the ImagingStudy,
for an ECG the waveform Observation with its measurements and a DiagnosticReport, a Provenance
and the audit record, committed together before the sender hears "success".

An object that cannot be filed is quarantined with its reason (``dicom.quarantine``) and the
caller gets a failure outcome it maps to its own status (DIMSE status, HTTP). A repeated SOP
Instance UID with the same bytes is a success that stores nothing; with other bytes the stored
one is kept and the newcomer quarantined for the operator to decide.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import Connection, select

from dicom import charsets, checksum, header, index, known, quarantine
from dicom.header import Header
from dicom.keylocks import KeyedLocks
from dicom.mapping import ecg
from dicom.mapping.imaging_study import UID_SYSTEM, fhir_datetime, imaging_study, study_identifier
from dicom.readers import Read, Readers
from dicom.storage import ObjectStore
from records import db, ids, service
from records.audit_log import Event, append
from records.committer import GroupCommitter
from records.identity import RESIDENT_ID_SYSTEM, parse_resident_id
from records.provenance import ingest_provenance
from records.schema import dicom_instance, search_token
from records.service import RecordService
from records.staging import Staged
from records.store import Stored
from security.access import Scope
from security.principal import Principal, Role

log = logging.getLogger(__name__)

AE_SYSTEM = "urn:yilian:dicom-ae"  # Device.identifier: the AE title a device calls with
UID = re.compile(r"[0-9]+(\.[0-9]+)*")
SEX = {"M": "male", "F": "female", "O": "other"}
RETIRED = ("inactive", "entered-in-error")  # Device.status of a device that may not call
PLACERS = 4  # threads making objects durable (an fsync holds no interpreter lock)
FILING_LOCKS = "filing.lock"  # in the store's scratch folder (``keylocks.KeyedLocks``)

# outcomes, mapped by each caller to its own answer (DIMSE status, HTTP status)
STORED = "stored"
REPEAT = "repeat"
REFUSED = "refused"  # the object is wrong: quarantined, the sender should not retry as is
FAILED = "failed"  # our fault (database, disk): quarantined, the sender may retry


# the one table from outcomes to DIMSE statuses (PS3.4 GG.4-1 and B.2.3): the C-STORE status,
# and STOW-RS's Failure Reason
STATUS = {
    STORED: 0x0000,
    REPEAT: 0x0000,
    ("refused", "unreadable"): 0xC000,  # cannot understand
    ("refused", "missing"): 0xA900,  # data set does not match SOP class
    ("refused", "mismatch"): 0xA900,
    ("refused", "conflict"): 0xC001,  # failure: same SOP Instance UID, other content
    ("refused", "forbidden"): 0x0124,  # refused: not authorized (STOW-RS: outside the reach)
    FAILED: 0xA700,  # out of resources: our fault, the sender may retry
}


@dataclass(frozen=True)
class Origin:
    kind: str  # dicom | stow
    calling_ae: str | None
    peer: str | None
    organization: str | None  # the sending Organization's FHIR id
    user: str | None = None  # STOW-RS: the user who sent it (for the audit record)
    # STOW-RS: the sender's reach; an object of a patient outside it is refused (a device
    # sending by C-STORE files for its clinic, as the clinic's own HIS does)
    reach: Scope | None = None


@dataclass
class Outcome:
    result: str  # STORED | REPEAT | REFUSED | FAILED
    sop_uid: str | None = None
    study_uid: str | None = None
    reason: str | None = None
    problem: str | None = None  # REFUSED: unreadable | mismatch | missing
    resources: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    series_uid: str | None = None
    sop_class: str | None = None

    @property
    def ok(self) -> bool:
        return self.result in (STORED, REPEAT)

    @property
    def status(self) -> int:
        """The DIMSE status of this outcome (``STATUS``)."""
        key: Any = self.result
        if self.result == REFUSED:
            key = ("refused", self.problem or "unreadable")
        return STATUS.get(key, 0xC000)


class Refusal(Exception):
    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.problem = problem


class DicomIngest:
    def __init__(
        self,
        records: RecordService,
        store: ObjectStore,
        committer: GroupCommitter,
        *,
        default_tz: str = "+08:00",
        shared: bool = False,
    ) -> None:
        """``shared``: other processes file into the same store (``gateway.dicom_processes``):
        a SOP Instance UID is filed by one of them at a time (``keylocks``)."""
        self.records = records
        self.store = store
        self.committer = committer
        self.default_tz = default_tz
        self._devices: dict[str, tuple[float, str | None]] = {}  # AE -> (when, Organization id)
        # objects are made durable here while the writer runs their unit (``_file``)
        self._placing = ThreadPoolExecutor(PLACERS, thread_name_prefix="dicom-place")
        self._filing = KeyedLocks(store.scratch() / FILING_LOCKS if shared else None)
        self._known = known.Known(records)
        # worker processes reading arriving objects' headers (``yilian serve``), or none
        self.readers: Readers | None = None

    def close(self) -> None:
        """Stop the placing threads and the readers (after the listeners have stopped)."""
        self._placing.shutdown(wait=True)
        self._filing.close()
        if self.readers is not None:
            self.readers.close()

    # -- who is calling ---------------------------------------------------------------------

    def organization_of_ae(self, ae_title: str) -> str | None:
        """The Organization owning the registered Device that calls with ``ae_title`` (None:
        unknown caller, or a device retired: status inactive or entered-in-error). Remembered
        for a minute, so a device registered or retired is seen without a restart."""
        cached = self._devices.get(ae_title)
        if cached and time.monotonic() - cached[0] < 60:
            return cached[1]
        with db.reader(self.records.engine).connect() as conn:
            found = self.records.find_by_identifiers(conn, [("Device", AE_SYSTEM, ae_title)])
        device = found.get(("Device", AE_SYSTEM, ae_title))
        owner = None
        if device is not None and device.json().get("status") not in RETIRED:
            ref = device.json().get("owner", {}).get("reference", "")
            owner = ref.split("/", 1)[1] if ref.startswith("Organization/") else None
        self._devices[ae_title] = (time.monotonic(), owner)
        return owner

    def forget_devices(self) -> None:
        """Look every calling AE title up again (after Devices changed)."""
        self._devices.clear()

    def known_ae_titles(self) -> list[str]:
        """Every AE title a registered Device calls with."""
        with db.reader(self.records.engine).connect() as conn:
            rows = conn.execute(
                select(search_token.c.code).where(
                    search_token.c.res_type == "Device",
                    search_token.c.param == "identifier",
                    search_token.c.system == AE_SYSTEM,
                )
            )
            return sorted({r[0] for r in rows if r[0]})

    # -- filing --------------------------------------------------------------------------------

    def file(
        self,
        path: Path,
        origin: Origin,
        *,
        sop_class: str | None = None,
        measured: tuple[int, str] | None = None,
    ) -> Outcome:
        """File the DICOM file at ``path``; it is moved into the store or into quarantine (the
        caller's copy is gone afterwards). ``sop_class``: what the sender said it is (C-STORE);
        ``measured``: the file's size and content digest (``dicom.checksum``) when the caller
        has them (the lane)."""
        head: Header | None = None
        try:
            done = None
            if self.readers is not None:
                done = self.readers.read(path, hashed=measured is None)
            head, ecg_ds, measured = _read(path, done, measured)
            _check(head, sop_class)
            with self._filing.hold(str(head["SOPInstanceUID"])):
                return self._file(path, head, origin, measured, ecg_ds)
        except Refusal as refusal:
            return self._quarantine(path, origin, refusal.reason, refusal.problem, head)
        except Exception as exc:  # noqa: BLE001 - our fault: keep the object, say so
            log.exception("filing a SOP instance failed: %s", type(exc).__name__)
            reason = f"internal error: {type(exc).__name__}"
            return self._quarantine(path, origin, reason, None, head, failed=True)

    def _file(
        self,
        path: Path,
        head: Header,
        origin: Origin,
        measured: tuple[int, str] | None,
        ecg_ds: Dataset | None,
    ) -> Outcome:
        """``measured``: the object's size and content digest when the caller has them already;
        ``ecg_ds``: an ECG's dataset, whose waveform is mapped. The caller holds the SOP
        Instance UID's turn (``_filing``): two filings of one UID at once with different
        content (a device sending again while the first is still being filed) would both place
        their file, and the one refused as a conflict would take the stored object's file with
        it."""
        sop_uid, study_uid = str(head["SOPInstanceUID"]), str(head["StudyInstanceUID"])
        series_uid, sop_class = str(head["SeriesInstanceUID"]), str(head["SOPClassUID"])
        key = f"studies/{study_uid}/{series_uid}/{sop_uid}.dcm"
        size, digest = measured or checksum.of_file(path)
        who = _principal(origin)
        # the object is durable before its index row commits (a crash between leaves a file
        # the sender's retry overwrites); one already there is a repeat or a conflict. Its
        # fsyncs (file and folder, half a millisecond) run on another thread while the unit's
        # statements run, and the unit waits for them before it is done.
        placed = not self.store.exists(key)
        alone = self._filing.busy() <= 1  # no other filing in flight: one association, say
        durable = (
            self._placing.submit(self.store.put_file, key, path, eager=alone) if placed else None
        )

        def row_for(patient_ref: str) -> dict[str, Any]:
            return index.row(
                head,
                storage_key=key,
                size=size,
                digest=digest,
                patient_ref=patient_ref,
                org_id=origin.organization,
                calling_ae=origin.calling_ae,
            )

        def work(conn: Connection) -> Outcome:
            outcome = unit(conn)
            if durable is not None:
                durable.result()  # raises if it could not be made durable: no row then
            return outcome

        def unit(conn: Connection) -> Outcome:
            db.lock_keys(conn, [f"dicom-study:{study_uid}"])
            earlier = index.digest_of(conn, sop_uid)
            if earlier is not None:
                if earlier[0] != checksum.ALGORITHM and durable is not None:
                    durable.result()  # the newcomer is read where it is placed
                if checksum.matches(earlier, digest, self.store.path(key) if placed else path):
                    return Outcome(
                        REPEAT, sop_uid, study_uid, series_uid=series_uid, sop_class=sop_class
                    )
                raise Refusal(
                    f"SOP Instance UID {sop_uid} is already stored with other content; "
                    "the stored object is kept",
                    "conflict",
                )
            patient, created = self._patient(conn, who, head, origin)
            if (
                origin.reach is not None
                and not created
                and not RecordService.visible(conn, "Patient", patient.res_id, origin.reach)
            ):
                raise Refusal(
                    "the object names a patient outside the sender's reach; it was not filed",
                    "forbidden",
                )
            row = row_for(patient.res_id)
            index.insert(conn, row)
            written = [patient] if created else []
            study = self._find_study(conn, study_uid)
            if study is None or row["series_uid"] not in known.series_uids(study):
                study = self._write_study(conn, who, study_uid, patient.res_id, study)
                written.append(study)
            study_ref = f"ImagingStudy/{study.res_id}"
            warnings: list[str] = []
            if ecg_ds is not None:
                written += self._ecg(conn, who, ecg_ds, patient.res_id, study_ref, origin, warnings)
            if written:
                written.append(self._provenance(conn, who, written, sop_uid, origin))
            refs = [f"{s.res_type}/{s.res_id}" for s in written] or [study_ref]
            append(conn, who, Event.touching("dicom-store", [(r, patient.res_id) for r in refs]))
            return Outcome(
                STORED,
                sop_uid,
                study_uid,
                resources=refs,
                warnings=warnings,
                series_uid=series_uid,
                sop_class=sop_class,
            )

        staged = None
        if placed and ecg_ds is None and origin.reach is None:
            staged = self._staged(head, origin, who, row_for, durable, work)
        try:
            outcome: Outcome = self.committer.submit(staged or work)
        except BaseException:
            if durable is not None:
                wait([durable])
                target = self.store.path(key)
                if target.exists():  # back where the caller's quarantine looks for it
                    target.replace(path)
            raise
        if not placed:
            if outcome.result == STORED:  # a file left by a crash before its row: replace it
                self.store.put_file(key, path)
            else:
                path.unlink(missing_ok=True)
        log.debug("DICOM %s from %s (%d bytes)", outcome.result, origin.calling_ae, size)
        return outcome

    def _staged(
        self,
        head: Header,
        origin: Origin,
        who: Principal,
        row_for: Callable[[str], dict[str, Any]],
        durable: Future[Any] | None,
        work: Callable[[Connection], Outcome],
    ) -> Staged[Outcome] | None:
        """The unit of an instance of a study and series the record holds, of a patient it
        knows, staged (``dicom.known``): its index row and audit record, written by the writer
        with others' once it checked their ground; ``work`` when that ground moved. None when
        the record lacks what it files under (``work`` creates it)."""
        study_uid, series_uid = str(head["StudyInstanceUID"]), str(head["SeriesInstanceUID"])
        patient_keys = service.patient_keys(patient_identifiers(head, origin))
        study_key = ("ImagingStudy", *study_identifier(study_uid))
        found = known.ground(self._known, patient_keys, study_key, series_uid)
        if found is None:
            return None
        row = row_for(found.patient_id)
        study_ref = f"ImagingStudy/{found.study_id}"
        outcome = Outcome(
            STORED,
            row["sop_uid"],
            study_uid,
            resources=[study_ref],
            series_uid=series_uid,
            sop_class=row["sop_class"],
        )

        def fallback(conn: Connection) -> Outcome:
            self._known.forget(list(found.expect))
            return work(conn)

        return Staged(
            outcome,
            fallback=fallback,
            expect=found.expect,
            extra={dicom_instance.name: [row]},
            claims=[(dicom_instance.name, row["sop_uid"])],
            audit=[(who, Event.touching("dicom-store", [(study_ref, found.patient_id)]))],
            ready=durable.result if durable is not None else None,
        )

    # -- the record ----------------------------------------------------------------------------

    def _patient(
        self, conn: Connection, who: Principal, head: Header, origin: Origin
    ) -> tuple[Stored, bool]:
        identifiers = patient_identifiers(head, origin)
        if not identifiers:
            raise Refusal("PatientID (0010,0020) is empty: the object cannot be filed", "missing")
        return self.records.patient_by_identifiers(
            conn, who, patient_body(head, identifiers, origin), models=False
        )

    def _find_study(self, conn: Connection, study_uid: str) -> Stored | None:
        """The ImagingStudy of a Study Instance UID, if the record has it."""
        key = ("ImagingStudy", *study_identifier(study_uid))
        return self.records.find_by_identifiers(conn, [key]).get(key)

    def _write_study(
        self, conn: Connection, who: Principal, study_uid: str, patient_id: str, study: Any
    ) -> Stored:
        body = imaging_study(
            index.study_rows(conn, study_uid), subject=f"Patient/{patient_id}", tz=self.default_tz
        )
        if study is None:
            stored, _ = self.records.create_in(conn, who, "ImagingStudy", body, models=False)
        else:
            stored, _ = self.records.update_in(
                conn, who, "ImagingStudy", study.res_id, body, models=False
            )
        return stored

    def refresh_studies(self, study_uids: set[str], origin: Origin) -> None:
        """Bring the ImagingStudy of each study up to what the index holds (counts, instances):
        run when an association or a STOW request ends, not after every instance."""
        who = _principal(origin)
        for study_uid in sorted(study_uids):

            def work(conn: Connection, study_uid: str = study_uid) -> None:
                db.lock_keys(conn, [f"dicom-study:{study_uid}"])
                study = self._find_study(conn, study_uid)
                rows = index.study_rows(conn, study_uid)
                if study is None or not rows:
                    return
                subject = study.json()["subject"]["reference"]
                body = imaging_study(rows, subject=subject, tz=self.default_tz)
                old = {k: v for k, v in study.json().items() if k not in ("id", "meta")}
                if body != old:
                    stored, _ = self.records.update_in(
                        conn, who, "ImagingStudy", study.res_id, body, models=False
                    )
                    append(
                        conn,
                        who,
                        Event.touching("dicom-store", [(f"ImagingStudy/{stored.res_id}", None)]),
                    )

            try:
                self.committer.submit(work)
            except Exception as exc:  # noqa: BLE001 - the next store of the study retries it
                log.error("refreshing an ImagingStudy failed: %s", type(exc).__name__)

    def _ecg(
        self,
        conn: Connection,
        who: Principal,
        ds: Dataset,
        patient_id: str,
        study_ref: str,
        origin: Origin,
        warnings: list[str],
    ) -> list[Stored]:
        try:
            bodies = ecg.ecg_resources(
                ds,
                subject=f"Patient/{patient_id}",
                new_id=ids.new_id,
                imaging_study=study_ref,
                performer=f"Organization/{origin.organization}" if origin.organization else None,
            )
        except ValueError as exc:  # the study is filed; the tracing could not be read
            warnings.append(f"ECG waveform not mapped: {exc}")
            return []
        writes = [(b["resourceType"], b["id"], b, True) for b in bodies]
        return self.records.write_batch(conn, who, writes, models=False)

    def _provenance(
        self, conn: Connection, who: Principal, written: list[Stored], sop_uid: str, origin: Origin
    ) -> Stored:
        body = ingest_provenance(
            [f"{s.res_type}/{s.res_id}" for s in written],
            organization=origin.organization,
            sender=origin.calling_ae or "unknown sender",
            source={
                "identifier": {"system": UID_SYSTEM, "value": f"urn:oid:{sop_uid}"},
                "display": f"DICOM {origin.kind} from {origin.calling_ae or '?'}",
            },
        )
        stored, _ = self.records.create_in(conn, who, "Provenance", body, models=False)
        return stored

    # -- quarantine ----------------------------------------------------------------------------

    def refuse(self, path: Path, origin: Origin, reason: str) -> Outcome:
        """Refuse the object at ``path`` unread, because of who sent it: quarantined, the sender
        told 'not authorized' (0x0124)."""
        return self._quarantine(path, origin, reason, "forbidden", None)

    def cut_off(
        self, path: Path, origin: Origin, *, sop_uid: str | None, sop_class: str | None
    ) -> Outcome:
        """Keep what arrived of an object whose transfer ended before its last byte (the
        association aborted or the connection dropped): nothing is filed, the sender never
        heard success; the operator sees what came and when."""
        size = path.stat().st_size if path.exists() else 0
        reason = f"transfer cut off: the association ended after {size} bytes of the object"
        return self._quarantine(
            path, origin, reason, "cut-off", None, sop_uid=sop_uid, sop_class=sop_class
        )

    def retry(self, qid: str) -> Outcome | None:
        """File a quarantined object again (after its sender's device was registered, say);
        None when there is no such entry or nothing left to file."""
        entry = quarantine.get(self.records.engine, qid)
        if entry is None or entry.status != quarantine.QUARANTINED or not entry.storage_key:
            return None
        work = self.store.scratch() / f"{ids.new_id()}.dcm"
        with self.store.open(entry.storage_key) as src, open(work, "wb") as dst:
            for chunk in iter(lambda: src.read(1024 * 1024), b""):
                dst.write(chunk)
        organization = self.organization_of_ae(entry.calling_ae) if entry.calling_ae else None
        origin = Origin(entry.origin, entry.calling_ae, entry.peer, organization)
        head: Header | None = None
        try:
            head, ecg_ds, measured = _read(work)
            _check(head, None)
            with self._filing.hold(str(head["SOPInstanceUID"])):
                outcome = self._file(work, head, origin, measured, ecg_ds)
        except Refusal as refusal:
            work.unlink(missing_ok=True)
            quarantine.settle(self.records.engine, qid, released=False, reason=refusal.reason)
            return Outcome(REFUSED, _text(head, "SOPInstanceUID"), reason=refusal.reason)
        quarantine.settle(self.records.engine, qid, released=outcome.ok)
        if outcome.ok:
            self.store.delete(entry.storage_key)
        return outcome

    def _quarantine(
        self,
        path: Path,
        origin: Origin,
        reason: str,
        problem: str | None,
        head: Header | None,
        *,
        failed: bool = False,
        sop_uid: str | None = None,
        sop_class: str | None = None,
    ) -> Outcome:
        """Quarantine the object at ``path``; its UIDs from its header when it could be read,
        else as the caller knows them (a C-STORE request's)."""
        sop_uid = sop_uid or _text(head, "SOPInstanceUID")
        sop_class = sop_class or _text(head, "SOPClassUID")
        entry = quarantine.put(
            self.records.engine,
            self.store,
            path,
            origin=origin.kind,
            calling_ae=origin.calling_ae,
            peer=origin.peer,
            sop_uid=sop_uid,
            sop_class=sop_class,
            reason=reason,
        )
        log.warning("DICOM object from %s quarantined (%s): %s", origin.calling_ae, entry, reason)
        return Outcome(
            FAILED if failed else REFUSED,
            sop_uid,
            reason=reason,
            problem=problem,
            sop_class=sop_class,
        )


# -- reading and checking ------------------------------------------------------------------------


IN_MEMORY = 1024 * 1024  # an object up to this size is read once and parsed from memory


def _read(
    path: Path, done: Read | None = None, measured: tuple[int, str] | None = None
) -> tuple[Header, Dataset | None, tuple[int, str] | None]:
    """(the header, an ECG's dataset, the object's size and content digest: ``measured`` when given,
    else when it was read whole).

    ``done``: what a reader process read of it (``dicom.readers``), taken unless it is an ECG.
    The first ``IN_MEMORY`` bytes are read in one call: the header is read straight from them
    (``dicom.header.quick``) when it is plain and ends there, else parsed by pydicom from
    memory (the elements filing needs, ``dicom.header.read``), or by pydicom from the whole
    object when unusual. An ECG is read whole by pydicom, its waveform mapped."""
    if done is not None and done[0]["SOPClassUID"] not in ecg.ECG_SOP_CLASSES:
        return done[0], None, measured or done[1]
    try:
        with open(path, "rb") as f:
            data = f.read(IN_MEMORY + 1)
        whole = len(data) <= IN_MEMORY
        if measured is None and whole:
            measured = (len(data), checksum.of_bytes(data))
        found = header.quick(data, prefix=not whole)
        if found is not None and found["SOPClassUID"] not in ecg.ECG_SOP_CLASSES:
            return found, None, measured
        ds = header.read(data, prefix=not whole)
        is_ecg = ds is not None and ecg.is_ecg(ds)
        if ds is None or is_ecg:
            ds = dcmread(BytesIO(data) if whole else path, stop_before_pixels=True)
            is_ecg = ecg.is_ecg(ds)
        charsets.fix_dataset(ds)
        # decodes every value filing reads (the names too): a value that cannot be read fails
        # here, not later
        head = header.of_dataset(ds)
        return head, ds if is_ecg else None, measured
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise Refusal(f"the dataset cannot be read: {exc}"[:500], "unreadable") from None


def _check(head: Header, sop_class: str | None) -> None:
    missing = [
        f"{k} {t}"
        for k, t in (
            ("SOPClassUID", "(0008,0016)"),
            ("SOPInstanceUID", "(0008,0018)"),
            ("StudyInstanceUID", "(0020,000D)"),
            ("SeriesInstanceUID", "(0020,000E)"),
        )
        if not (head[k] or "").strip()
    ]
    if missing:
        raise Refusal(f"required UID missing: {', '.join(missing)}", "missing")
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        value = str(head[keyword])
        if len(value) > 64 or not UID.fullmatch(value):
            raise Refusal(f"{keyword} '{value[:70]}' is not a valid UID", "mismatch")
    if sop_class and head["SOPClassUID"] != sop_class:
        raise Refusal(
            f"the dataset's SOP Class UID {head['SOPClassUID']} is not the one of the request "
            f"({sop_class})",
            "mismatch",
        )


def _text(head: Header | None, keyword: str) -> str | None:
    if head is None:
        return None
    value = (head[keyword] or "").strip()
    return value[:64] or None


def patient_identifiers(head: Header, origin: Origin) -> list[dict[str, Any]]:
    """PatientID (with IssuerOfPatientID, else the sending clinic, as the namespace) and the
    resident identity number wherever it appears (PatientID or OtherPatientIDsSequence)."""
    out: list[dict[str, Any]] = []
    namespace = head["IssuerOfPatientID"] or origin.organization or "unknown"

    def add(value: str | None, issuer: str) -> None:
        value = (value or "").strip()
        if not value:
            return
        if _is_resident_id(value):
            ident = {"system": RESIDENT_ID_SYSTEM, "value": value.upper(), "use": "official"}
        else:
            ident = {"system": f"urn:yilian:mrn:{issuer}", "value": value}
        if ident not in out:
            out.append(ident)

    add(head["PatientID"], namespace)
    for patient_id, issuer in head.other_ids:
        add(patient_id, issuer or namespace)
    return out


def _is_resident_id(value: str) -> bool:
    if len(value.strip()) != 18:
        return False
    try:
        parse_resident_id(value)
    except ValueError:
        return False
    return True


def patient_body(head: Header, identifiers: list[dict[str, Any]], origin: Origin) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Patient", "identifier": identifiers}
    name = charsets.name_of(head["PatientName"])
    if name is not None:
        names = []
        if name.ideographic:
            names.append(_human_name(name.ideographic, "official"))
        if name.alphabetic:
            names.append(_human_name(name.alphabetic, "usual" if names else "official"))
        body["name"] = [n for n in names if n]
    when = fhir_datetime(head["PatientBirthDate"] or "", None, "")
    if when:
        body["birthDate"] = when
    sex = SEX.get((head["PatientSex"] or "").upper())
    if sex:
        body["gender"] = sex
    if origin.organization:
        body["managingOrganization"] = {"reference": f"Organization/{origin.organization}"}
    return body


def _human_name(group: str, use: str) -> dict[str, Any]:
    parts = (group.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    out: dict[str, Any] = {"use": use}
    text = family + given if _is_cjk(family + given) else " ".join(p for p in (given, family) if p)
    if text:
        out["text"] = text
    if family:
        out["family"] = family
    givens = [g for g in (given, middle) if g]
    if givens:
        out["given"] = givens
    if prefix:
        out["prefix"] = [prefix]
    if suffix:
        out["suffix"] = [suffix]
    return out if len(out) > 1 else {}


def _is_cjk(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" for ch in text)


def _principal(origin: Origin) -> Principal:
    return Principal(
        username=(origin.user or f"dicom:{origin.calling_ae or origin.kind}")[:128],
        role=Role.SYSTEM,
        organization=origin.organization,
        source=origin.peer,
    )
