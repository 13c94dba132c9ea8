"""Query/Retrieve SCP (PS3.4 Annex C): C-FIND, C-GET and C-MOVE at the PATIENT, STUDY, SERIES
and IMAGE levels of the Patient Root and Study Root information models, over the index
(``dicom.query``), for the DICOM server of ``dicom.scp``.

A caller acts as a DEVICE principal of the Organization owning its registered Device and sees
only the instances the access policy lets that organization see; anything else does not exist
for it. Each query and each retrieve writes one audit event naming the studies touched (by
``urn:oid:`` UID) and their patients, before anything is disclosed. Objects go out as stored,
one read from disk at a time; the C-STORE sub-operations are pynetdicom's, which counts those
the peer cannot take (a transfer syntax it did not accept) as failed and names them in the
final Warning (0xB000). Log lines carry AE titles, levels, counts and statuses, never an
identifier's content (pynetdicom's identifier logging is switched off below).
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import ColumnElement

from dicom import query
from dicom.archive import Archive
from dicom.ingest import AE_SYSTEM, DicomIngest
from dicom.query import ATTRIBUTES, LEVELS, Match, Query, QueryError
from dicom.scp import caller_organization
from records import db
from records.audit_log import Event
from records.errors import FhirError
from security.principal import Principal, Role

log = logging.getLogger(__name__)

# identifiers name patients: pynetdicom would log them at INFO
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

# the levels each information model has (PS3.4 C.6.1 and C.6.2)
PATIENT_ROOT = LEVELS
STUDY_ROOT = LEVELS[1:]
MODELS = {
    PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
    PatientRootQueryRetrieveInformationModelGet: PATIENT_ROOT,
    PatientRootQueryRetrieveInformationModelMove: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT,
    StudyRootQueryRetrieveInformationModelGet: STUDY_ROOT,
    StudyRootQueryRetrieveInformationModelMove: STUDY_ROOT,
}
# the unique key of each level (PS3.4 C.6.1.1, C.6.2.1)
UNIQUE = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

# the one table from query/retrieve outcomes to DIMSE statuses (PS3.4 C.4.1.1.4, C.4.2.1.5,
# C.4.3.1.4; PS3.7 C.5)
NOT_AUTHORISED = "not authorised"  # the policy refuses the caller: 0x0124 Refused: Not Authorized
NOT_THE_MODEL = "not the model"  # no or wrong level, no unique key to retrieve
CANNOT_PROCESS = "cannot process"  # a matching value we cannot read (bad range, not a number)
OUR_FAULT = "our fault"  # database, disk: the caller may try again
MAX_MATCHES = 1000  # C-FIND answers at most this many (as Orthanc's LimitFindResults)
STATUS = {
    NOT_AUTHORISED: {"find": 0x0124, "get": 0x0124, "move": 0x0124},
    NOT_THE_MODEL: {"find": 0xA900, "get": 0xA900, "move": 0xA900},
    CANNOT_PROCESS: {"find": 0xC000, "get": 0xC000, "move": 0xC000},
    OUR_FAULT: {"find": 0xA700, "get": 0xA701, "move": 0xA701},
}
PENDING, CANCEL = 0xFF00, 0xFE00
UTF8 = "ISO_IR 192"
# answered by us, not matched against the index
ANSWERED = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"}
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
PREFERRED = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    *(
        UID(t)
        for t in ALL_TRANSFER_SYNTAXES
        if t not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    ),
]
MAX_CONTEXTS = 128  # presentation contexts one association request may propose (PS3.8 9.3.2)


class Problem(Exception):
    """An outcome that ends a request with a failure status: a value, not a fault."""

    def __init__(self, kind: str, comment: str) -> None:
        super().__init__(comment)
        self.kind = kind
        self.comment = comment

    def status(self, service: str) -> Dataset:
        ds = Dataset()
        ds.Status = STATUS[self.kind][service]
        ds.ErrorComment = self.comment[:64]
        return ds


class QueryRetrieve:
    """The C-FIND, C-GET and C-MOVE handlers of the gateway's Application Entity:
    ``DicomServer(..., extra_handlers=qr.handlers(), configure=qr.configure)``."""

    def __init__(
        self,
        ingest: DicomIngest,
        organization_of_certificate: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.ingest = ingest
        self.certificate_owner = organization_of_certificate
        self.records = ingest.records
        self.archive = Archive(ingest.records, ingest.store)  # access, its audit, headers

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
        ]

    @staticmethod
    def configure(ae: AE) -> None:
        """The Q/R SOP classes, and on every storage SOP class the SCP role a C-GET requestor
        proposes for itself (PS3.7 D.3.3.4), so its objects can come back on its association.
        A role asked for is granted; one not asked for stays as it was (storescu's SCU).

        pynetdicom accepts the first of *our* transfer syntaxes the requestor proposes, and a
        getscu proposes the three uncompressed ones in one context: Explicit VR Little Endian
        comes first, so an object stored that way goes out as it is (with Implicit first it
        would be re-encoded, losing the VRs of private elements). A C-STORE proposing both is
        then received in Explicit VR too."""
        for sop_class in MODELS:
            ae.add_supported_context(sop_class)
        for context in AllStoragePresentationContexts:
            sop_class = str(context.abstract_syntax)
            ae.remove_supported_context(sop_class)
            ae.add_supported_context(sop_class, PREFERRED, scu_role=True, scp_role=True)

    # -- who is calling ------------------------------------------------------------------------

    def _caller(self, event: Any) -> Principal:
        requestor = event.assoc.requestor
        ae_title = str(requestor.ae_title).strip()
        return Principal(
            username=f"dicom:{ae_title}"[:128],
            role=Role.DEVICE,
            organization=caller_organization(event.assoc, self.ingest, self.certificate_owner),
            source=f"{requestor.address}:{requestor.port}",
        )

    def _visible(self, who: Principal, action: str) -> ColumnElement[bool] | None:
        """The instances ``who`` may see; a refusal by the policy is audited and answered."""
        try:
            return self.archive.visible(who, action)
        except FhirError as refused:
            raise Problem(NOT_AUTHORISED, refused.diagnostics or "not authorised") from None

    def _audit(
        self, who: Principal, action: str, touched: list[tuple[str, str | None]], detail: str
    ) -> None:
        """One event per query or retrieve, naming each study (or patient) touched once."""
        self.records.audit(who, Event(action, detail=detail, touched=tuple(dict.fromkeys(touched))))

    # -- C-FIND --------------------------------------------------------------------------------

    def on_find(self, event: Any) -> Iterator[tuple[Any, Dataset | None]]:
        who = self._caller(event)
        try:
            request = _identifier(event)
            level = _level(request, MODELS.get(str(event.request.AffectedSOPClassUID), LEVELS))
            matches = self._find(who, request, level)
        except Problem as problem:
            log.info("C-FIND from %s refused: %s", who.username, problem.kind)
            yield problem.status("find"), None
            return
        except Exception as exc:  # noqa: BLE001 - our fault: the caller may ask again
            log.error("C-FIND from %s failed: %s", who.username, type(exc).__name__)
            yield Problem(OUR_FAULT, f"internal error: {type(exc).__name__}").status("find"), None
            return
        log.info("C-FIND %s from %s: %d matches", level, who.username, len(matches))
        ae_title = str(event.assoc.acceptor.ae_title).strip()
        for match in matches:
            if event.is_cancelled:
                log.info("C-FIND from %s cancelled", who.username)
                yield CANCEL, None
                return
            yield PENDING, _answer(request, level, match, ae_title)
        yield 0x0000, None

    def _find(self, who: Principal, request: Dataset, level: str) -> list[Match]:
        keys: dict[str, str] = {}
        wanted: list[str] = []
        in_header: dict[str, str] = {}  # not in the index: matched against the stored header
        for elem in request:
            name = elem.keyword or f"{elem.tag:08X}"
            if name in ANSWERED or elem.tag.element == 0:
                continue
            value = "" if elem.VR == "SQ" else _text(elem)
            attribute = ATTRIBUTES.get(name)
            if attribute is not None and attribute.column is not None and value:
                keys[name] = value
                continue
            wanted.append(name)
            if attribute is None and value:
                in_header[query.tag_of(name)] = value
        if level != "PATIENT":
            wanted.append("StudyInstanceUID")  # to name the studies in the audit record
        try:
            q = Query(level, keys, wanted, limit=MAX_MATCHES)
        except QueryError as exc:
            raise Problem(CANNOT_PROCESS, str(exc)) from None
        visible = self._visible(who, "dicom-find")
        try:
            with db.reader(self.records.engine).connect() as conn:
                found = query.search(conn, q, visible, self.archive.headers)
        except QueryError as exc:
            raise Problem(CANNOT_PROCESS, str(exc)) from None
        found = [m for m in found if _header_matches(m, in_header)]
        detail = f"{level} level, {len(found)} matches"
        self._audit(who, "dicom-find", [_touched(m, level) for m in found], detail)
        return found

    # -- C-GET and C-MOVE -----------------------------------------------------------------------

    def on_get(self, event: Any) -> Iterator[Any]:
        who = self._caller(event)
        try:
            rows = self._retrieve(who, event, "dicom-get", None)
        except Problem as problem:
            log.info("C-GET from %s refused: %s", who.username, problem.kind)
            yield 1  # pynetdicom sends a failure only after a number of sub-operations
            yield problem.status("get"), None
            return
        log.info("C-GET from %s: %d instances", who.username, len(rows))
        yield len(rows)
        yield from _datasets(self.ingest, event, rows)

    def on_move(self, event: Any) -> Iterator[Any]:
        who = self._caller(event)
        target = str(event.move_destination or "").strip()
        destination = self.destination(target, who.organization)
        if destination is None:
            log.info("C-MOVE from %s: move destination %r unknown", who.username, target)
            yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
            return
        try:
            rows = self._retrieve(who, event, "dicom-move", target)
        except Problem as problem:
            log.info("C-MOVE from %s refused: %s", who.username, problem.kind)
            # pynetdicom answers a failure only once it has associated with the destination
            yield (*destination, {"ae_title": target, "contexts": [build_context(Verification)]})
            yield 1
            yield problem.status("move"), None
            return
        log.info("C-MOVE from %s to %s: %d instances", who.username, target, len(rows))
        sub_association = {
            "ae_title": target,
            "contexts": _contexts(rows),
            "evt_handlers": [(evt.EVT_CONN_OPEN, _nodelay)],
        }
        yield (*destination, sub_association)
        yield len(rows)
        yield from _datasets(self.ingest, event, rows)

    def destination(self, ae_title: str, organization: str | None) -> tuple[str, int] | None:
        """Host and port of the registered Device calling with ``ae_title`` (its ``url``
        ``dicom://host:port``); None when there is none, it is retired, has no such url, or
        belongs to another organization than the caller's (images do not leave for a device
        the caller does not answer for)."""
        if not ae_title or not organization:
            return None
        key = ("Device", AE_SYSTEM, ae_title)
        with db.reader(self.records.engine).connect() as conn:
            device = self.records.find_by_identifiers(conn, [key]).get(key)
        if device is None:
            return None
        body = device.json()
        if body.get("status") in ("inactive", "entered-in-error"):
            return None
        if body.get("owner", {}).get("reference") != f"Organization/{organization}":
            log.warning("C-MOVE to %s refused: the device is another organization's", ae_title)
            return None
        try:
            url = urlsplit(str(body.get("url", "")))
            port = url.port
        except ValueError:
            return None
        if url.scheme != "dicom" or not url.hostname or not port:
            log.warning("Device %s has no url dicom://host:port: it cannot be moved to", ae_title)
            return None
        return url.hostname, port

    def _retrieve(self, who: Principal, event: Any, action: str, target: str | None) -> list[Any]:
        """The index rows of the instances a C-GET or C-MOVE identifier names, audited."""
        try:
            request = _identifier(event)
            level = _level(request, MODELS.get(str(event.request.AffectedSOPClassUID), LEVELS))
            named = {k: _uids(request, k) for k in UNIQUE.values()}
            if not named[UNIQUE[level]]:
                raise Problem(NOT_THE_MODEL, f"a {level} retrieve needs {UNIQUE[level]}")
            visible = self._visible(who, action)
            with db.reader(self.records.engine).connect() as conn:
                rows = query.instances(
                    conn,
                    study=named["StudyInstanceUID"] or None,
                    series=named["SeriesInstanceUID"] or None,
                    sop=named["SOPInstanceUID"] or None,
                    patient_id=named["PatientID"][0] if named["PatientID"] else None,
                    visible=visible,
                )
            detail = f"{level} level, {len(rows)} instances" + (f" to {target}" if target else "")
            touched = [(f"urn:oid:{r.study_uid}", r.patient_ref) for r in rows]
            self._audit(who, action, touched, detail)
            return rows
        except Problem:
            raise
        except Exception as exc:  # noqa: BLE001 - our fault: the caller may ask again
            log.error("%s from %s failed: %s", action, who.username, type(exc).__name__)
            raise Problem(OUR_FAULT, f"internal error: {type(exc).__name__}") from None


# -- identifiers -------------------------------------------------------------------------------


def _identifier(event: Any) -> Dataset:
    try:
        request = event.identifier
        request.decode()  # the identifier's character set, now rather than element by element
    except Exception as exc:  # noqa: BLE001 - whatever the peer sent cannot be read
        raise Problem(CANNOT_PROCESS, f"the identifier cannot be decoded: {exc}") from None
    return request  # type: ignore[no-any-return]


def _level(request: Dataset, levels: tuple[str, ...]) -> str:
    level = str(request.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in levels:
        said = level or "none"
        raise Problem(NOT_THE_MODEL, f"QueryRetrieveLevel {said}: one of {', '.join(levels)}")
    return level


def _text(elem: DataElement) -> str:
    """A matching value as ``dicom.query`` takes it: several values joined by backslashes,
    person names as "alphabetic=ideographic=phonetic" in Unicode."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    if elem.VM > 1:
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _uids(request: Dataset, keyword: str) -> list[str]:
    if keyword not in request:
        return []
    elem = request[keyword]
    if elem.value in (None, ""):
        return []
    return [u.strip() for u in _text(elem).split("\\") if u.strip()]


def _touched(match: Match, level: str) -> tuple[str, str | None]:
    study = match.values.get("StudyInstanceUID")
    if level != "PATIENT" and study:
        return f"urn:oid:{study}", match.patient
    return f"Patient/{match.patient}", match.patient


# -- answers -----------------------------------------------------------------------------------


def _answer(request: Dataset, level: str, match: Match, ae_title: str) -> Dataset:
    """One C-FIND answer: every key of the request, with what the index or the stored header
    holds (empty when nothing), in UTF-8."""
    ds = Dataset()
    ds.SpecificCharacterSet = UTF8
    ds.QueryRetrieveLevel = level
    for elem in request:
        name = elem.keyword or f"{elem.tag:08X}"
        if name in ANSWERED or elem.tag.element == 0:
            continue
        vr = _vr(elem)
        if name in match.values:
            ds.add(DataElement(elem.tag, vr, _dicom_value(match.values[name], vr)))
            continue
        stored = match.elements.get(f"{elem.tag:08X}")
        copied = _from_json(elem.tag, stored) if stored else None
        if copied is not None:
            ds.add(copied)
        else:
            ds.add(DataElement(elem.tag, vr, [] if vr == "SQ" else None))
    if "InstanceAvailability" in request:
        ds.InstanceAvailability = "ONLINE"
    ds.RetrieveAETitle = ae_title
    return ds


def _vr(elem: DataElement) -> str:
    try:
        return str(dictionary_VR(elem.tag))
    except KeyError:  # a private or unknown tag: as the caller said
        return str(elem.VR)


def _dicom_value(value: Any, vr: str) -> Any:
    if isinstance(value, list):
        return [str(v) for v in value]
    if vr in ("IS", "US", "UL", "SS", "SL"):
        return int(value)
    return str(value)


def _from_json(tag: Any, element: dict[str, Any]) -> DataElement | None:
    if "BulkDataURI" in element:
        return None
    try:
        return Dataset.from_json({f"{tag:08X}": element})[tag]  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - a stored element we cannot rebuild: answered empty
        return None


# -- matching on what the index does not hold --------------------------------------------------


def _header_matches(match: Match, keys: dict[str, str]) -> bool:
    """Single value, wildcard, list and range matching (PS3.4 C.2.2.2) of keys the index does
    not hold, against the stored header of the match's representative instance; a match
    without the attribute does not match."""
    for tag, value in keys.items():
        element = match.elements.get(tag)
        if value in ("*",):
            continue
        if not element or not any(_matches(c, value, element) for c in _candidates(element)):
            return False
    return True


def _candidates(element: dict[str, Any]) -> list[str]:
    out = []
    for v in element.get("Value") or []:
        if isinstance(v, dict):  # a person name's component groups; items of a sequence
            out += [str(v[g]) for g in ("Alphabetic", "Ideographic", "Phonetic") if v.get(g)]
        else:
            out.append(str(v))
    return out


def _matches(candidate: str, value: str, element: dict[str, Any]) -> bool:
    vr = element.get("vr")
    for one in value.split("\\"):
        if vr in ("DA", "TM", "DT") and "-" in one:
            low, _, high = (p.strip() for p in one.partition("-"))
            if (not low or candidate >= low) and (not high or candidate <= high + "\x7f"):
                return True
            continue
        pattern = re.escape(one).replace(r"\*", ".*").replace(r"\?", ".")
        flags = re.IGNORECASE if vr == "PN" else 0
        if re.fullmatch(pattern, candidate, flags):
            return True
    return False


# -- the objects -------------------------------------------------------------------------------


def _datasets(ingest: DicomIngest, event: Any, rows: list[Any]) -> Iterator[tuple[int, Any]]:
    """(Pending, dataset) for each instance, read from disk when its turn comes; pynetdicom
    sends it with C-STORE and counts the outcome."""
    for row in rows:
        if event.is_cancelled:
            log.info("retrieve cancelled by %s", str(event.assoc.requestor.ae_title).strip())
            yield CANCEL, None
            return
        ds: Dataset
        try:
            ds = dcmread(ingest.store.path(row.storage_key))
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable file: one failure
            log.error("stored object %s unreadable: %s", row.storage_key, type(exc).__name__)
            ds = Dataset()  # sent as nothing: pynetdicom counts it failed, names the instance
            ds.SOPInstanceUID = row.sop_uid
        yield PENDING, ds


def _contexts(rows: list[Any]) -> list[PresentationContext]:
    """The storage contexts a C-MOVE sub-association proposes: each SOP class in each stored
    transfer syntax, and Implicit VR Little Endian, which every SCP takes, for the
    uncompressed ones (pynetdicom converts between those)."""
    wanted: dict[tuple[str, str], None] = {}
    for r in rows:
        wanted[(r.sop_class, r.transfer_syntax or ImplicitVRLittleEndian)] = None
        if (r.transfer_syntax or ImplicitVRLittleEndian) in UNCOMPRESSED:
            wanted[(r.sop_class, ImplicitVRLittleEndian)] = None
    contexts = [build_context(UID(s), UID(t)) for s, t in wanted]
    if len(contexts) > MAX_CONTEXTS:
        log.warning(
            "C-MOVE needs %d presentation contexts; %d proposed", len(contexts), MAX_CONTEXTS
        )
    return contexts[:MAX_CONTEXTS]


def _nodelay(event: Any) -> None:
    """Nagle off on the sub-association too: each C-STORE response would wait for an ACK."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass
