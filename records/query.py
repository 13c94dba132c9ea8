"""FHIR search: parse the query string and build SQL over the resource table and the index.

Repeated parameters are ANDed, comma-separated values ORed, as the FHIR search rules say.
Unknown parameters are refused (400 naming them and listing the known ones) unless the client
asks for ``Prefer: handling=lenient``, in which case they are ignored and left out of the self link.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, not_, or_, select

from records import fhirdates, searchparams
from records.errors import Invalid
from records.schema import resource, search_date, search_reference, search_string, search_token

CONTROL = {"_count", "_offset", "_sort", "_include", "_revinclude", "_summary", "_total", "_format"}
COMMON = {"_id", "_lastUpdated", "patient"}
NO_COMPARTMENT = {
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Endpoint",
    "HealthcareService",
    "Subscription",
}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


@dataclass
class Filter:
    name: str
    modifier: str | None
    values: list[str]


@dataclass
class SearchRequest:
    rtype: str
    filters: list[Filter] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param, descending)
    count: int = 20
    offset: int = 0
    include: list[str] = field(default_factory=list)
    revinclude: list[str] = field(default_factory=list)
    summary_count: bool = False
    echoed: list[tuple[str, str]] = field(default_factory=list)  # what goes in the self link


def known_params(rtype: str) -> set[str]:
    names = set(searchparams.PARAMS.get(rtype, {})) | {"_id", "_lastUpdated"}
    if rtype not in NO_COMPARTMENT and rtype != "Binary":
        names.add("patient")
    return names


def parse(
    rtype: str,
    items: list[tuple[str, str]],
    *,
    default_count: int,
    max_count: int,
    lenient: bool = False,
) -> SearchRequest:
    req = SearchRequest(rtype, count=default_count)
    known = known_params(rtype)
    unknown: list[str] = []
    for key, raw in items:
        name, _, modifier = key.partition(":")
        if key in CONTROL or name in CONTROL:
            _control(req, name, raw, max_count)
            req.echoed.append((key, raw))
            continue
        if name not in known:
            unknown.append(key)
            continue
        req.filters.append(Filter(name, modifier or None, [v for v in _split(raw)]))
        req.echoed.append((key, raw))
    if unknown and not lenient:
        raise Invalid(
            f"unknown search parameter(s) for {rtype}: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(known))}",
            expression=sorted(unknown),
        )
    return req


def _split(raw: str) -> list[str]:
    """Split on commas that are not escaped with a backslash."""
    out, cur, escaped = [], "", False
    for ch in raw:
        if escaped:
            cur += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v for v in out if v != ""]


def _control(req: SearchRequest, name: str, raw: str, max_count: int) -> None:
    if name in ("_count", "_offset"):
        try:
            number = int(raw)
        except ValueError:
            raise Invalid(
                f"{name} must be a whole number, not '{raw}'", expression=[name]
            ) from None
        if number < 0:
            raise Invalid(f"{name} must not be negative", expression=[name])
        if name == "_count":
            req.count = min(number, max_count)
            req.summary_count = req.summary_count or number == 0
        else:
            req.offset = number
    elif name == "_sort":
        for part in _split(raw):
            desc = part.startswith("-")
            pname = part.lstrip("-")
            if pname not in known_params(req.rtype) - {"patient"}:
                raise Invalid(f"cannot sort {req.rtype} by '{pname}'", expression=["_sort"])
            req.sort.append((pname, desc))
    elif name == "_include":
        req.include.append(raw)
    elif name == "_revinclude":
        req.revinclude.append(raw)
    elif name == "_summary":
        if raw == "count":
            req.summary_count = True
        elif raw not in ("false", "true", "data", "text"):
            raise Invalid(f"_summary={raw} is not supported", expression=["_summary"])


# -- SQL ---------------------------------------------------------------------------------------


def base_query(rtype: str) -> Select:  # type: ignore[type-arg]
    return select(
        resource.c.res_type,
        resource.c.res_id,
        resource.c.version,
        resource.c.last_updated,
        resource.c.deleted,
        resource.c.content,
        resource.c.patient_id,
    ).where(resource.c.res_type == rtype, resource.c.deleted.is_(False))


def filter_clauses(req: SearchRequest) -> list[ColumnElement[bool]]:
    return [_filter_clause(req.rtype, f) for f in req.filters]


def _filter_clause(rtype: str, flt: Filter) -> ColumnElement[bool]:
    if flt.modifier == "missing":
        return _missing(rtype, flt)
    if flt.name == "_id":
        return resource.c.res_id.in_(flt.values)
    if flt.name == "_lastUpdated":
        return or_(
            *[
                _date_condition(resource.c.last_updated, resource.c.last_updated, v, flt.name)
                for v in flt.values
            ]
        )
    if flt.name == "patient":
        ids = [_reference_id(v, "Patient")[1] for v in flt.values]
        return resource.c.patient_id.in_(ids)
    param = searchparams.PARAMS[rtype][flt.name]
    if param.kind == "token":
        table = search_token
        conds = [_token_condition(v) for v in flt.values]
    elif param.kind == "string":
        table = search_string
        conds = [_string_condition(v, flt.modifier) for v in flt.values]
    elif param.kind == "date":
        table = search_date
        conds = [
            _date_condition(search_date.c.low, search_date.c.high, v, flt.name) for v in flt.values
        ]
    else:
        table = search_reference
        conds = [_reference_condition(v, flt.modifier) for v in flt.values]
    inner = select(table.c.res_id).where(
        table.c.res_type == rtype, table.c.param == flt.name, or_(*conds)
    )
    if flt.modifier == "not" and param.kind == "token":
        return not_(resource.c.res_id.in_(inner))
    return resource.c.res_id.in_(inner)


def _missing(rtype: str, flt: Filter) -> ColumnElement[bool]:
    want_missing = flt.values[:1] == ["true"]
    if flt.name == "patient":
        return (
            resource.c.patient_id.is_(None) if want_missing else resource.c.patient_id.is_not(None)
        )
    param = searchparams.PARAMS[rtype].get(flt.name)
    if param is None:
        raise Invalid(f":missing is not supported on {flt.name}")
    table = {
        "token": search_token,
        "string": search_string,
        "date": search_date,
        "reference": search_reference,
    }[param.kind]
    inner = select(table.c.res_id).where(table.c.res_type == rtype, table.c.param == flt.name)
    present = resource.c.res_id.in_(inner)
    return not_(present) if want_missing else present


def _token_condition(value: str) -> ColumnElement[bool]:
    if "|" in value:
        system, _, code = value.partition("|")
        conds = []
        if system:
            conds.append(search_token.c.system == system)
        else:
            conds.append(search_token.c.system.is_(None))
        if code:
            conds.append(search_token.c.code == code)
        return and_(*conds)
    return search_token.c.code == value


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string_condition(value: str, modifier: str | None) -> ColumnElement[bool]:
    if modifier == "exact":
        return search_string.c.raw == value
    norm = _like_escape(searchparams.normalise(value))
    if modifier == "contains":
        return search_string.c.value.like(f"%{norm}%", escape="\\")
    if modifier not in (None, ""):
        raise Invalid(f"string modifier :{modifier} is not supported (use :exact or :contains)")
    return search_string.c.value.like(f"{norm}%", escape="\\")


def _date_condition(low_col, high_col, value: str, name: str):  # type: ignore[no-untyped-def]
    prefix = value[:2] if value[:2] in PREFIXES else "eq"
    text = value[2:] if value[:2] in PREFIXES else value
    span = fhirdates.parse_range(text)
    if span is None:
        raise Invalid(f"'{value}' is not a valid date for {name}", expression=[name])
    lo, hi = span
    conditions = {
        "eq": and_(low_col >= lo, high_col <= hi),
        "ap": and_(low_col <= hi, high_col >= lo),
        "ne": or_(low_col < lo, high_col > hi),
        "gt": high_col > hi,
        "lt": low_col < lo,
        "ge": high_col >= lo,
        "le": low_col <= hi,
        "sa": low_col > hi,
        "eb": high_col < lo,
    }
    return conditions[prefix]


def _reference_id(value: str, default_type: str | None = None) -> tuple[str | None, str]:
    parsed = searchparams.parse_reference(value)
    if parsed is None:
        raise Invalid(f"'{value}' is not a reference")
    rtype, rid = parsed
    return (rtype or default_type, rid)


def _reference_condition(value: str, modifier: str | None) -> ColumnElement[bool]:
    rtype, rid = _reference_id(value)
    if modifier and modifier[:1].isupper():
        rtype = modifier
    cond = search_reference.c.target_id == rid
    if rtype:
        cond = and_(cond, search_reference.c.target_type == rtype)
    return cond


def order_by(req: SearchRequest) -> list[Any]:
    orders = []
    col: Any
    for name, desc in req.sort or [("_lastUpdated", False)]:
        if name == "_lastUpdated":
            col = resource.c.last_updated
        elif name == "_id":
            col = resource.c.res_id
        else:
            param = searchparams.PARAMS[req.rtype][name]
            table, value_col = {
                "string": (search_string, search_string.c.value),
                "date": (search_date, search_date.c.low),
                "token": (search_token, search_token.c.code),
                "reference": (search_reference, search_reference.c.target_id),
            }[param.kind]
            agg = func.max(value_col) if desc else func.min(value_col)
            col = (
                select(agg)
                .where(
                    table.c.res_type == req.rtype,
                    table.c.res_id == resource.c.res_id,
                    table.c.param == name,
                )
                .scalar_subquery()
            )
        orders.append(col.desc() if desc else col.asc())
    orders.append(resource.c.res_id.asc())
    return orders


def as_datetime(value: str) -> datetime | None:
    span = fhirdates.parse_range(value)
    return span[0] if span else None
