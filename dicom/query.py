"""Queries over the DICOM index: the one engine behind C-FIND, QIDO-RS and the retrieve calls.

A query names a level (PATIENT, STUDY, SERIES, IMAGE), matching keys by DICOM keyword and the
attributes wanted back. Matching follows PS3.4 C.2.2.2: single value, list of UIDs, wildcard
(``*`` and ``?``), range (dates and times), universal (empty); person names match in any of
their component groups (alphabetic, ideographic, phonetic) without regard to case, and fuzzy
matching compares folded names (``charsets.name_key``) by substring. Keys of lower levels may
narrow a higher-level query (QIDO's ``ModalitiesInStudy``, ``Modality`` for studies); counts
are always over the whole study or series, not over the instances that matched.

Who may see what is a condition on the instance's Patient (``visible_clause``), from the same
access policy as the FHIR API; an instance outside it does not exist for the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Connection, Select, and_, func, literal, or_, select

from dicom import charsets
from records.schema import dicom_instance
from records.scope import patient_set_clause
from security.access import Scope

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
c = dicom_instance.c


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: str
    column: Any  # the index column, or None for a computed attribute
    kind: str = "text"  # text | uid | pn | date | time | int | cs


ATTRIBUTES = {
    a.keyword: a
    for a in [
        Attribute("PatientName", "PATIENT", c.patient_name, "pn"),
        Attribute("PatientID", "PATIENT", c.dicom_patient_id),
        Attribute("IssuerOfPatientID", "PATIENT", c.issuer),
        Attribute("PatientBirthDate", "PATIENT", c.birth_date, "date"),
        Attribute("PatientSex", "PATIENT", c.sex, "cs"),
        Attribute("NumberOfPatientRelatedStudies", "PATIENT", None, "int"),
        Attribute("NumberOfPatientRelatedSeries", "PATIENT", None, "int"),
        Attribute("NumberOfPatientRelatedInstances", "PATIENT", None, "int"),
        Attribute("StudyInstanceUID", "STUDY", c.study_uid, "uid"),
        Attribute("StudyDate", "STUDY", c.study_date, "date"),
        Attribute("StudyTime", "STUDY", c.study_time, "time"),
        Attribute("AccessionNumber", "STUDY", c.accession),
        Attribute("StudyID", "STUDY", c.study_id),
        Attribute("StudyDescription", "STUDY", c.study_description),
        Attribute("ReferringPhysicianName", "STUDY", c.referring, "pn"),
        Attribute("ModalitiesInStudy", "STUDY", c.modality, "cs"),
        Attribute("NumberOfStudyRelatedSeries", "STUDY", None, "int"),
        Attribute("NumberOfStudyRelatedInstances", "STUDY", None, "int"),
        Attribute("SeriesInstanceUID", "SERIES", c.series_uid, "uid"),
        Attribute("Modality", "SERIES", c.modality, "cs"),
        Attribute("SeriesNumber", "SERIES", c.series_number, "int"),
        Attribute("SeriesDescription", "SERIES", c.series_description),
        Attribute("BodyPartExamined", "SERIES", c.body_part, "cs"),
        Attribute("NumberOfSeriesRelatedInstances", "SERIES", None, "int"),
        Attribute("SOPInstanceUID", "IMAGE", c.sop_uid, "uid"),
        Attribute("SOPClassUID", "IMAGE", c.sop_class, "uid"),
        Attribute("InstanceNumber", "IMAGE", c.instance_number, "int"),
        Attribute("NumberOfFrames", "IMAGE", c.frames, "int"),
    ]
}
# what each level answers with when nothing else is asked for (QIDO-RS PS3.18 Table 6.7.1-2)
DEFAULTS = {
    "PATIENT": [
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ],
    "STUDY": [
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ],
    "SERIES": [
        "StudyInstanceUID",
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "SeriesInstanceUID",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
    ],
    "IMAGE": [
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "NumberOfFrames",
    ],
}
# the unique key of each level and what identifies its groups in the index
GROUP = {
    "PATIENT": (c.patient_ref,),  # the resident: one PatientID may be two people at two clinics
    "STUDY": (c.study_uid,),
    "SERIES": (c.study_uid, c.series_uid),
    "IMAGE": (c.sop_uid,),
}


class QueryError(ValueError):
    """A query that cannot be answered as asked (an unknown level, a malformed range)."""


@dataclass
class Query:
    level: str
    keys: dict[str, str] = field(default_factory=dict)  # keyword -> DICOM matching value
    wanted: list[str] = field(default_factory=list)  # keywords (or 8-hex tags) to return
    everything: bool = False  # QIDO includefield=all: the whole stored header
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        self.level = self.level.upper()
        if self.level == "INSTANCE":
            self.level = "IMAGE"
        if self.level not in LEVELS:
            raise QueryError(f"unknown query level {self.level!r}: one of {', '.join(LEVELS)}")
        for keyword in self.keys:
            if keyword not in ATTRIBUTES:
                raise QueryError(f"{keyword} cannot be matched on (not in the index)")


def visible_clause(scope: Scope) -> ColumnElement[bool] | None:
    """The instances a principal with this ImagingStudy scope may see (None: all of them)."""
    if scope.patients is None:
        return None
    return patient_set_clause(scope.patients, c.patient_ref)


# -- matching ---------------------------------------------------------------------------------


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _text_match(column: Any, value: str) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        return column.like(_like(value), escape="\\")
    return column == value  # type: ignore[no-any-return]


def _name_match(column: Any, value: str, fuzzy: bool) -> ColumnElement[bool]:
    if fuzzy and column is c.patient_name:  # the folded key is the patient's name only
        key = charsets.name_key(value.replace("*", "").replace("?", ""))
        return c.name_key.like(f"%{_like(key)}%", escape="\\")
    pattern = _like(value.lower())
    folded = func.lower(column)
    # the value may be any one component group of the stored "alphabetic=ideographic=phonetic"
    return or_(
        *(
            folded.like(p, escape="\\")
            for p in (pattern, f"{pattern}=%", f"%={pattern}", f"%={pattern}=%")
        )
    )


def _range(column: Any, value: str, width: int) -> ColumnElement[bool]:
    low, _, high = value.partition("-")
    low, high = low.strip(), high.strip()
    for part in (low, high):
        if part and not part.replace(".", "").replace(":", "").isdigit():
            raise QueryError(f"{value!r} is not a DICOM date or time range")
    conditions = []
    if low:
        conditions.append(column >= low.replace(":", "")[:width])
    if high:
        # a time bound of HHMM means up to the end of that minute: compare padded on the right
        bound = high.replace(":", "")
        conditions.append(column <= bound + "9" * max(0, width - len(bound)))
    return and_(*conditions) if conditions else literal(True)


def _match(attribute: Attribute, value: str, fuzzy: bool) -> ColumnElement[bool] | None:
    value = value.strip()
    if value in ("", "*"):
        return None  # universal matching
    column = attribute.column
    if column is None:
        raise QueryError(f"{attribute.keyword} is returned, not matched on")
    kind = attribute.kind
    values = [v for v in value.split("\\")] if kind in ("uid", "cs", "text") else [value]
    if len(values) > 1:
        return or_(*(m for v in values if (m := _match(attribute, v, fuzzy)) is not None))
    if kind == "pn":
        return _name_match(column, value, fuzzy)
    if kind == "date":
        return _range(column, value, 8) if "-" in value else column == value.replace("-", "")
    if kind == "time":
        if "-" in value:
            return _range(column, value, 16)
        return column.like(value.replace(":", "") + "%")  # type: ignore[no-any-return]
    if kind == "int":
        try:
            return column == int(value)  # type: ignore[no-any-return]
        except ValueError:
            raise QueryError(f"{attribute.keyword}: {value!r} is not a number") from None
    return _text_match(column, value)


def _conditions(query: Query, visible: ColumnElement[bool] | None) -> list[ColumnElement[bool]]:
    conditions = [visible] if visible is not None else []
    for keyword, value in query.keys.items():
        matched = _match(ATTRIBUTES[keyword], value, query.fuzzy)
        if matched is not None:
            conditions.append(matched)
    return conditions


# -- answering ---------------------------------------------------------------------------------


@dataclass
class Match:
    """One patient, study, series or instance found: ``values`` by keyword (text as Unicode,
    person names as "alphabetic=ideographic=phonetic", numbers as int, ModalitiesInStudy as a
    list) and ``elements``, attributes the index does not hold, as DICOM JSON by 8-hex tag."""

    values: dict[str, Any]
    elements: dict[str, Any] = field(default_factory=dict)
    patient: str | None = None  # the FHIR Patient id (for the audit record)


HeaderSource = Callable[[list[str]], dict[str, dict[str, Any]]]  # sop uids -> DICOM JSON


def search(
    conn: Connection,
    query: Query,
    visible: ColumnElement[bool] | None = None,
    headers: HeaderSource | None = None,
) -> list[Match]:
    """The matches of ``query`` in a stable order, ``offset`` and ``limit`` applied; elements
    the index does not hold come from ``headers`` (``dicom.index.Headers``)."""
    level = query.level
    group = GROUP[level]
    order = {
        "PATIENT": [func.max(c.name_key).nulls_last(), c.patient_ref],
        "STUDY": [func.max(func.coalesce(c.study_date, "")).desc(), c.study_uid],
        "SERIES": [func.min(c.series_number).nulls_last(), c.series_uid],
        "IMAGE": [func.min(c.instance_number).nulls_last(), c.sop_uid],
    }[level]
    found: Select[Any] = (
        select(*group)
        .where(*_conditions(query, visible))
        .group_by(*group)
        .order_by(*order)
        .offset(query.offset)
    )
    if query.limit is not None:
        found = found.limit(query.limit)
    keys = [tuple(r) for r in conn.execute(found)]
    if not keys:
        return []
    wanted = _wanted(query)
    levels = LEVELS[: LEVELS.index(level) + 1]
    return _describe(conn, level, keys, wanted, levels, query.everything, visible, headers)


def _wanted(query: Query) -> list[str]:
    wanted = list(DEFAULTS[query.level])
    for name in [*query.keys, *(keyword(w) for w in query.wanted)]:
        if name not in wanted:
            wanted.append(name)
    return wanted


def _in_groups(level: str, keys: list[tuple[Any, ...]]) -> ColumnElement[bool]:
    if level == "SERIES":
        return c.series_uid.in_([k[1] for k in keys])
    column = GROUP[level][0]
    return column.in_([k[0] for k in keys])  # type: ignore[no-any-return]


def _describe(
    conn: Connection,
    level: str,
    keys: list[tuple[Any, ...]],
    wanted: list[str],
    levels: Sequence[str],
    everything: bool,
    visible: ColumnElement[bool] | None,
    header_source: HeaderSource | None,
) -> list[Match]:
    group = GROUP[level]
    plain = [
        ATTRIBUTES[k]
        for k in wanted
        if k in ATTRIBUTES
        and ATTRIBUTES[k].level in levels
        and ATTRIBUTES[k].column is not None
        and k != "ModalitiesInStudy"
    ]
    columns = [func.min(a.column).label(a.keyword) for a in plain]
    counts = [
        func.count(func.distinct(c.study_uid)).label("studies"),
        func.count(func.distinct(c.series_uid)).label("series"),
        func.count().label("instances"),
        func.min(c.sop_uid).label("representative"),
        func.min(c.patient_ref).label("patient"),
    ]
    where = [_in_groups(level, keys)]
    if visible is not None:
        where.append(visible)
    stmt = select(*group, *columns, *counts).where(*where).group_by(*group)
    rows = {tuple(r[: len(group)]): r for r in conn.execute(stmt)}
    modalities = _modalities(conn, where) if level == "STUDY" else {}
    headers = _headers(header_source, rows, wanted, everything and level == "IMAGE")
    out = []
    for key in keys:
        r = rows.get(key)
        if r is None:
            continue
        found: dict[str, Any] = {}
        for a in plain:
            value = getattr(r, a.keyword)
            if value not in (None, ""):
                found[a.keyword] = value
        if "ModalitiesInStudy" in wanted and level == "STUDY":
            found["ModalitiesInStudy"] = modalities.get(key[0], [])
        _counts(found, level, r, wanted)
        out.append(Match(found, headers.get(r.representative, {}), r.patient))
    return out


def _counts(found: dict[str, Any], level: str, r: Any, wanted: list[str]) -> None:
    names = {
        "PATIENT": [
            ("NumberOfPatientRelatedStudies", r.studies),
            ("NumberOfPatientRelatedSeries", r.series),
            ("NumberOfPatientRelatedInstances", r.instances),
        ],
        "STUDY": [
            ("NumberOfStudyRelatedSeries", r.series),
            ("NumberOfStudyRelatedInstances", r.instances),
        ],
        "SERIES": [("NumberOfSeriesRelatedInstances", r.instances)],
        "IMAGE": [],
    }[level]
    for keyword, value in names:
        if keyword in wanted:
            found[keyword] = int(value)


def _modalities(conn: Connection, where: list[ColumnElement[bool]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    rows = conn.execute(
        select(c.study_uid, c.modality)
        .where(*where, c.modality.is_not(None))
        .distinct()
        .order_by(c.study_uid, c.modality)
    )
    for study_uid, modality in rows:
        out.setdefault(study_uid, []).append(modality)
    return out


def _headers(
    source: HeaderSource | None,
    rows: dict[tuple[Any, ...], Any],
    wanted: list[str],
    everything: bool,
) -> dict[str, dict[str, Any]]:
    """Elements asked for that the index does not hold, from a representative instance's
    stored header (every element of it for ``everything``)."""
    extra = [w for w in wanted if w not in ATTRIBUTES]
    if source is None or (not extra and not everything):
        return {}
    tags = {tag_of(w) for w in extra}
    found = source([r.representative for r in rows.values()])
    return {
        sop_uid: {tag: element for tag, element in elements.items() if everything or tag in tags}
        for sop_uid, elements in found.items()
    }


def tag_of(keyword_or_tag: str) -> str:
    """``PatientAge`` or ``00101010`` -> ``00101010``."""
    if len(keyword_or_tag) == 8 and all(ch in "0123456789abcdefABCDEF" for ch in keyword_or_tag):
        return keyword_or_tag.upper()
    tag = tag_for_keyword(keyword_or_tag)
    if tag is None:
        raise QueryError(f"{keyword_or_tag!r} is neither a DICOM keyword nor a tag")
    return f"{tag:08X}"


def keyword(tag_or_keyword: str) -> str:
    """``00100010`` -> ``PatientName``; a keyword stays as it is; unknown -> QueryError."""
    if len(tag_or_keyword) == 8 and all(ch in "0123456789abcdefABCDEF" for ch in tag_or_keyword):
        found = keyword_for_tag(int(tag_or_keyword, 16))
        return found or tag_or_keyword.upper()
    if tag_for_keyword(tag_or_keyword) is None:
        raise QueryError(f"{tag_or_keyword!r} is neither a DICOM keyword nor a tag")
    return tag_or_keyword


def vr(keyword: str) -> str:
    return str(dictionary_VR(keyword))


# -- retrieving --------------------------------------------------------------------------------


def instances(
    conn: Connection,
    *,
    study: str | Iterable[str] | None = None,
    series: str | Iterable[str] | None = None,
    sop: str | Iterable[str] | None = None,
    patient_id: str | None = None,
    visible: ColumnElement[bool] | None = None,
) -> list[Any]:
    """The index rows (without headers) of the instances a retrieve names, in study, series,
    instance order; an empty list when none is visible."""
    columns = [col for col in dicom_instance.c if col.key != "header"]
    stmt = select(*columns)
    for column, value in ((c.study_uid, study), (c.series_uid, series), (c.sop_uid, sop)):
        if value is None:
            continue
        values = [value] if isinstance(value, str) else list(value)
        stmt = stmt.where(column.in_(values))
    if patient_id is not None:
        stmt = stmt.where(c.dicom_patient_id == patient_id)
    if visible is not None:
        stmt = stmt.where(visible)
    stmt = stmt.order_by(
        c.study_uid,
        c.series_number.nulls_last(),
        c.series_uid,
        c.instance_number.nulls_last(),
        c.sop_uid,
    )
    return list(conn.execute(stmt))
