"""Versioned storage of FHIR resources and their search index, inside one open transaction.

Every function takes a SQLAlchemy ``Connection`` already in a transaction (the unit of work);
none of them commits. Access rules and audit are not applied here: ``records.service`` does that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.engine import Dialect

from records import bulk, fhirdates, searchparams
from records.errors import Gone, NotFound
from records.schema import (
    resource,
    resource_version,
    search_date,
    search_reference,
    search_string,
    search_token,
)

INDEX_TABLES = (search_token, search_string, search_date, search_reference)


@dataclass(frozen=True)
class Stored:
    res_type: str
    res_id: str
    version: int
    last_updated: datetime
    deleted: bool
    content: str | None
    patient_id: str | None = None

    def json(self) -> dict[str, Any]:
        assert self.content is not None
        loaded: dict[str, Any] = json.loads(self.content)
        return loaded

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


# json.dumps with these options builds an encoder for every call; this one is built once
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps(body: dict[str, Any]) -> str:
    return _ENCODE(body)


def current(conn: Connection, rtype: str, rid: str, *, lock: bool = False) -> Stored | None:
    statement = _SELECT_CURRENT_LOCKED if lock else _SELECT_CURRENT
    row = conn.execute(statement, {"rtype": rtype, "rid": rid}).first()
    return Stored(*row) if row else None


def read(conn: Connection, rtype: str, rid: str) -> Stored:
    found = current(conn, rtype, rid)
    if found is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    if found.deleted:
        raise Gone(f"{rtype}/{rid} was deleted (version {found.version})")
    return found


def vread(conn: Connection, rtype: str, rid: str, version: int) -> Stored:
    row = conn.execute(
        select(
            resource_version.c.res_type,
            resource_version.c.res_id,
            resource_version.c.version,
            resource_version.c.last_updated,
            resource_version.c.deleted,
            resource_version.c.content,
        ).where(
            resource_version.c.res_type == rtype,
            resource_version.c.res_id == rid,
            resource_version.c.version == version,
        )
    ).first()
    if row is None:
        raise NotFound(f"{rtype}/{rid} has no version {version}")
    stored = Stored(*row)
    if stored.deleted:
        raise Gone(f"version {version} of {rtype}/{rid} is a deletion")
    return stored


@dataclass(frozen=True)
class Pending:
    """One resource version to write. ``new``: the caller made a fresh id, so no row exists
    (no look-up, no old index to drop)."""

    rtype: str
    rid: str
    body: dict[str, Any]
    method: str  # POST | PUT
    new: bool = False


def write(conn: Connection, rtype: str, rid: str, body: dict[str, Any], method: str) -> Stored:
    """Store a new version of the resource (create or update) and re-index it."""
    return write_many(conn, [Pending(rtype, rid, body, method)])[0]


def write_many(conn: Connection, items: list[Pending]) -> list[Stored]:
    """Write several resources with one statement per table (executemany): the hot path of
    ingest writes a message's ten or so resources this way."""
    existing = {
        (it.rtype, it.rid): current(conn, it.rtype, it.rid, lock=True) for it in items if not it.new
    }
    rows = stage(conn, items, existing)
    flush(conn, rows)
    return rows.written


@dataclass
class Rows:
    """The rows of resource versions staged for writing, by statement: built without writing
    anything (``stage``), written with one statement per table (``flush``), and several units'
    rows can be written together (``extend``). ``bind`` turns the inserts into the driver's
    parameters ahead of time (in a worker process, say)."""

    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    index: dict[str, list[dict[str, Any]]] = field(  # by table name: Rows pickle
        default_factory=lambda: {t.name: [] for t in INDEX_TABLES}
    )
    written: list[Stored] = field(default_factory=list)
    bound: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)  # by table name
    keys: set[tuple[str, str, str]] = field(default_factory=set)  # identifiers, once bound

    def extend(self, other: Rows) -> None:
        self.inserts += other.inserts
        self.updates += other.updates
        self.versions += other.versions
        for table, rows in other.index.items():
            self.index[table] += rows
        for table, bound in other.bound.items():
            self.bound.setdefault(table, []).extend(bound)
        self.written += other.written
        self.keys |= other.keys

    def identifiers(self) -> set[tuple[str, str, str]]:
        """(type, system, value) of every identifier the staged versions carry."""
        return self.keys | {
            (r["res_type"], r["system"], r["code"])
            for r in self.index[search_token.name]
            if r["param"] == "identifier"
        }

    def bind(self, dialect: Dialect) -> None:
        """Turn the inserts into ``dialect``'s driver parameters (``bulk.bind``)."""
        self.keys = self.identifiers()
        for table, rows in ((resource, self.inserts), (resource_version, self.versions)):
            self.bound.setdefault(table.name, []).extend(bulk.bind(table, dialect, rows))
        for table in INDEX_TABLES:
            rows = self.index[table.name]
            self.bound.setdefault(table.name, []).extend(bulk.bind(table, dialect, rows))
        self.inserts, self.versions = [], []
        self.index = {t.name: [] for t in INDEX_TABLES}


def stage(
    conn: Connection, items: list[Pending], existing: dict[tuple[str, str], Stored | None]
) -> Rows:
    """The rows that write ``items``, given the current version of each one that is not new
    (``existing``); ``conn`` is only read (a Provenance's targets outside ``items``)."""
    when = _now()
    stamp = fhirdates.instant(when)
    in_batch: dict[tuple[str, str], str | None] = {}  # patient of resources written here
    rows = Rows()
    for it in items:
        old = existing.get((it.rtype, it.rid))
        version = old.version + 1 if old else 1
        meta = {
            k: v
            for k, v in (it.body.get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated")
        }
        rest = {k: v for k, v in it.body.items() if k not in ("resourceType", "id", "meta")}
        stored_body = {
            "resourceType": it.rtype,
            "id": it.rid,
            "meta": {"versionId": str(version), "lastUpdated": stamp, **meta},
            **rest,
        }
        content = dumps(stored_body)
        patient_id, org_id = compartment(conn, it.rtype, it.rid, stored_body, in_batch)
        in_batch[(it.rtype, it.rid)] = patient_id
        row = {
            "version": version,
            "last_updated": when,
            "deleted": False,
            "patient_id": patient_id,
            "org_id": org_id,
            "content": content,
        }
        if old is None:
            rows.inserts.append({"res_type": it.rtype, "res_id": it.rid, **row})
        else:
            rows.updates.append(
                {"k_type": it.rtype, "k_id": it.rid, **{f"v_{k}": v for k, v in row.items()}}
            )
        rows.versions.append(
            {
                "res_type": it.rtype,
                "res_id": it.rid,
                "version": version,
                "last_updated": when,
                "method": it.method,
                "deleted": False,
                "content": content,
            }
        )
        for table, index_rows_ in index_rows(it.rtype, it.rid, stored_body).items():
            rows.index[table.name].extend(index_rows_)
        rows.written.append(Stored(it.rtype, it.rid, version, when, False, content, patient_id))
    return rows


def flush(conn: Connection, rows: Rows) -> None:
    """Write staged rows: one statement per table (two where some were bound ahead)."""
    bulk.insert_rows(conn, resource, rows.inserts)
    bulk.insert_bound(conn, resource, rows.bound.get(resource.name, []))
    if rows.updates:
        conn.execute(_UPDATE_RESOURCE, rows.updates)
        drops = [{"k_type": u["k_type"], "k_id": u["k_id"]} for u in rows.updates]
        for table in INDEX_TABLES:
            conn.execute(_DELETE_INDEX[table.name], drops)
    bulk.insert_rows(conn, resource_version, rows.versions)
    bulk.insert_bound(conn, resource_version, rows.bound.get(resource_version.name, []))
    for table in INDEX_TABLES:
        bulk.insert_rows(conn, table, rows.index[table.name])
        bulk.insert_bound(conn, table, rows.bound.get(table.name, []))


def remove(conn: Connection, rtype: str, rid: str) -> Stored | None:
    """Mark the resource deleted (a new version); history keeps every earlier version."""
    existing = current(conn, rtype, rid, lock=True)
    if existing is None or existing.deleted:
        return None
    when = _now()
    version = existing.version + 1
    conn.execute(
        update(resource)
        .where(resource.c.res_type == rtype, resource.c.res_id == rid)
        .values(version=version, last_updated=when, deleted=True, content=None)
    )
    conn.execute(
        insert(resource_version).values(
            res_type=rtype,
            res_id=rid,
            version=version,
            last_updated=when,
            method="DELETE",
            deleted=True,
            content=None,
        )
    )
    _drop_index(conn, rtype, rid)
    return Stored(rtype, rid, version, when, True, None, existing.patient_id)


def history(
    conn: Connection,
    rtype: str | None,
    rid: str | None,
    *,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[tuple[Stored, str]]:
    """Versions newest first, with the method that made each (POST, PUT, DELETE)."""
    v = resource_version.c
    query = select(v.res_type, v.res_id, v.version, v.last_updated, v.deleted, v.content, v.method)
    if rtype:
        query = query.where(v.res_type == rtype)
    if rid:
        query = query.where(v.res_id == rid)
    if since:
        query = query.where(v.last_updated >= since)
    query = query.order_by(v.last_updated.desc(), v.version.desc()).limit(limit).offset(offset)
    return [(Stored(*row[:6]), row[6]) for row in conn.execute(query)]


def compartment(
    conn: Connection,
    rtype: str,
    rid: str,
    body: dict[str, Any],
    in_batch: dict[tuple[str, str], str | None] | None = None,
) -> tuple[str | None, str | None]:
    """(patient id whose compartment holds this resource, managing organization of a Patient)."""
    if rtype == "Patient":
        org = body.get("managingOrganization", {}).get("reference")
        parsed = searchparams.parse_reference(org) if org else None
        return rid, (parsed[1] if parsed and parsed[0] == "Organization" else None)
    linked: list[tuple[str, str]] = []
    for path in searchparams.COMPARTMENT_PATHS.get(rtype, ()):
        for value in searchparams.walk(body, path):
            ref = value.get("reference") if isinstance(value, dict) else None
            parsed = searchparams.parse_reference(ref) if isinstance(ref, str) else None
            if not parsed or parsed[0] is None:
                continue
            if parsed[0] == "Patient":
                return parsed[1], None
            linked.append((parsed[0], parsed[1]))
    for ltype, lid in linked:  # e.g. Provenance.target -> Observation -> its patient
        if in_batch and in_batch.get((ltype, lid)):
            return in_batch[(ltype, lid)], None
        found = current(conn, ltype, lid)
        if found is not None and found.patient_id:
            return found.patient_id, None
    return None, None


def index_rows(rtype: str, rid: str, body: dict[str, Any]) -> dict[Any, list[dict[str, Any]]]:
    """The search index rows of one resource version, by table."""
    rows: dict[Any, list[dict[str, Any]]] = {t: [] for t in INDEX_TABLES}
    for param, heads, paths in searchparams.indexed(rtype):
        if heads[0] not in body and (len(heads) == 1 or not any(h in body for h in heads[1:])):
            continue  # most parameters of a type: the resource has no element they read
        found = searchparams.values_at(body, paths)
        if not found:
            continue
        kind, name = param.kind, param.name
        if kind == "token":
            rows[search_token] += [
                {"res_type": rtype, "res_id": rid, "param": name, "system": s, "code": c[:255]}
                for s, c in set(searchparams.token_pairs(found))
            ]
        elif kind == "reference":
            rows[search_reference] += [
                {
                    "res_type": rtype,
                    "res_id": rid,
                    "param": name,
                    "target_type": target_type,
                    "target_id": target_id[:255],
                }
                for target_type, target_id in set(searchparams.reference_pairs(found))
            ]
        elif kind == "string":
            rows[search_string] += [
                {
                    "res_type": rtype,
                    "res_id": rid,
                    "param": name,
                    "value": searchparams.normalise(text)[:255],
                    "raw": text[:255],
                }
                for text in set(searchparams.string_values(found))
            ]
        elif kind == "date":
            for value in found:
                span = fhirdates.value_range(value)
                if span:
                    rows[search_date].append(
                        {
                            "res_type": rtype,
                            "res_id": rid,
                            "param": name,
                            "low": span[0],
                            "high": span[1],
                        }
                    )
    return rows


def _drop_index(conn: Connection, rtype: str, rid: str) -> None:
    for table in INDEX_TABLES:
        conn.execute(_DELETE_INDEX[table.name], {"k_type": rtype, "k_id": rid})


# Statements built once: SQLAlchemy then reuses their compiled form on every execution.
_SELECT_CURRENT = select(
    resource.c.res_type,
    resource.c.res_id,
    resource.c.version,
    resource.c.last_updated,
    resource.c.deleted,
    resource.c.content,
    resource.c.patient_id,
).where(resource.c.res_type == bindparam("rtype"), resource.c.res_id == bindparam("rid"))
_SELECT_CURRENT_LOCKED = _SELECT_CURRENT.with_for_update()
_UPDATE_RESOURCE = (
    update(resource)
    .where(resource.c.res_type == bindparam("k_type"), resource.c.res_id == bindparam("k_id"))
    .values(
        **{
            c: bindparam(f"v_{c}")
            for c in ("version", "last_updated", "deleted", "patient_id", "org_id", "content")
        }
    )
)
_DELETE_INDEX = {
    t.name: delete(t).where(t.c.res_type == bindparam("k_type"), t.c.res_id == bindparam("k_id"))
    for t in INDEX_TABLES
}


def by_identifiers(
    conn: Connection,
    keys: list[tuple[str, str, str]] | set[tuple[str, str, str]],
    holders: dict[tuple[str, str, str], set[str]] | None = None,
) -> dict[tuple[str, str, str], Stored]:
    """Live resources by (type, identifier system, value), in one query. ``holders``, when
    given, is filled with the id of every resource the index names for each key (an empty set
    for a key none carries), as the uniqueness check's own query would read them
    (``RecordService._check_unique_resident_id``): that check then needs no query."""
    columns, processors = _stored_columns(conn.dialect)
    rows = _by_identifiers(conn, set(keys), columns, holders)
    return {
        key: Stored(*(p(v) if p else v for p, v in zip(processors, row, strict=True)))
        for key, row in rows.items()
    }


@cache
def _stored_columns(dialect: Dialect) -> tuple[str, tuple[Any, ...]]:
    """The columns of a ``Stored`` as SQL over ``resource r``, and their result processors
    (SQLite keeps times as text and booleans as integers): made once per dialect."""
    selected = _SELECT_CURRENT.selected_columns
    return (
        ", ".join(f"r.{c.name}" for c in selected),
        tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in selected),
    )


def versions_by_identifiers(
    conn: Connection, keys: set[tuple[str, str, str]]
) -> dict[tuple[str, str, str], tuple[str, int]]:
    """(id, version) of the live resource by (type, identifier system, value): what a staged
    unit checks before it is written."""
    return {
        k: (row[0], row[1]) for k, row in _by_identifiers(conn, keys, "r.res_id, r.version").items()
    }


def _by_identifiers(
    conn: Connection,
    keys: set[tuple[str, str, str]],
    columns: str,
    holders: dict[tuple[str, str, str], set[str]] | None = None,
) -> dict[tuple[str, str, str], tuple[Any, ...]]:
    """``columns`` of the live resource carrying each identifier key, in one query of plain
    SQL (the ingest asks for every message; (res_type, param, code) is the index). With
    ``holders``, also the id of every resource the index gives for each key (see
    ``by_identifiers``): the same query, the resource joined on the side."""
    if holders is not None:
        holders.update({key: set() for key in keys})
    if not keys:
        return {}
    by_type: dict[str, set[str]] = {}
    for rtype, _, value in keys:
        by_type.setdefault(rtype, set()).add(value)
    m = bulk.mark(conn)
    branches, params = [], []
    for rtype in sorted(by_type):
        codes = sorted(by_type[rtype])
        branches.append(f"(t.res_type = {m} AND t.code IN ({', '.join([m] * len(codes))}))")
        params += [rtype, *codes]
    where = f"t.param = 'identifier' AND ({' OR '.join(branches)})"
    if holders is None:
        sql = (
            f"SELECT t.res_type, t.system, t.code, {columns} FROM search_token t "
            "JOIN resource r ON r.res_type = t.res_type AND r.res_id = t.res_id "
            f"WHERE r.deleted = {m} AND {where}"
        )
    else:  # every index row, live resource or not: its columns are NULL when not
        sql = (
            f"SELECT t.res_type, t.system, t.code, {columns}, t.res_id FROM search_token t "
            "LEFT JOIN resource r ON r.res_type = t.res_type AND r.res_id = t.res_id "
            f"AND r.deleted = {m} WHERE {where}"
        )
    found: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    for row in bulk.fetch_all(conn, sql, (False, *params)):
        key = (row[0], row[1], row[2])
        if key not in keys:
            continue
        if holders is None:
            found.setdefault(key, tuple(row[3:]))
            continue
        holders[key].add(row[-1])
        if row[3] is not None:  # a live resource (its first column is never NULL)
            found.setdefault(key, tuple(row[3:-1]))
    return found


def _now() -> datetime:
    when = fhirdates.now()
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def referring(conn: Connection, rtype: str, param: str, target: str) -> list[dict[str, Any]]:
    """Live resources of a type whose reference ``param`` points at ``target`` ("Type/id")."""
    target_type, _, target_id = target.partition("/")
    ref = search_reference
    found = select(ref.c.res_id).where(
        ref.c.res_type == rtype,
        ref.c.param == param,
        ref.c.target_type == target_type,
        ref.c.target_id == target_id,
    )
    rows = conn.execute(
        select(resource.c.content).where(
            resource.c.res_type == rtype,
            resource.c.deleted.is_(False),
            resource.c.res_id.in_(found),
        )
    )
    return [json.loads(row.content) for row in rows]
