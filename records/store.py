"""Versioned storage of FHIR resources and their search index, inside one open transaction.

Every function takes a SQLAlchemy ``Connection`` already in a transaction (the unit of work);
none of them commits. Access rules and audit are not applied here: ``records.service`` does that.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from records import fhirdates, searchparams
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


def new_id() -> str:
    return str(uuid.uuid4())


def dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def current(conn: Connection, rtype: str, rid: str, *, lock: bool = False) -> Stored | None:
    query = select(
        resource.c.res_type,
        resource.c.res_id,
        resource.c.version,
        resource.c.last_updated,
        resource.c.deleted,
        resource.c.content,
        resource.c.patient_id,
    ).where(resource.c.res_type == rtype, resource.c.res_id == rid)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
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


def write(conn: Connection, rtype: str, rid: str, body: dict[str, Any], method: str) -> Stored:
    """Store a new version of the resource (create or update) and re-index it."""
    existing = current(conn, rtype, rid, lock=True)
    version = existing.version + 1 if existing else 1
    when = _now()
    meta = {
        k: v for k, v in (body.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    meta = {"versionId": str(version), "lastUpdated": fhirdates.instant(when), **meta}
    rest = {k: v for k, v in body.items() if k not in ("resourceType", "id", "meta")}
    stored_body = {"resourceType": rtype, "id": rid, "meta": meta, **rest}
    content = dumps(stored_body)
    patient_id, org_id = compartment(conn, rtype, rid, stored_body)
    values = {
        "version": version,
        "last_updated": when,
        "deleted": False,
        "patient_id": patient_id,
        "org_id": org_id,
        "content": content,
    }
    if existing:
        conn.execute(
            update(resource)
            .where(resource.c.res_type == rtype, resource.c.res_id == rid)
            .values(**values)
        )
    else:
        conn.execute(insert(resource).values(res_type=rtype, res_id=rid, **values))
    conn.execute(
        insert(resource_version).values(
            res_type=rtype,
            res_id=rid,
            version=version,
            last_updated=when,
            method=method,
            deleted=False,
            content=content,
        )
    )
    reindex(conn, rtype, rid, stored_body)
    return Stored(rtype, rid, version, when, False, content, patient_id)


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
    conn: Connection, rtype: str, rid: str, body: dict[str, Any]
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
        found = current(conn, ltype, lid)
        if found is not None and found.patient_id:
            return found.patient_id, None
    return None, None


def reindex(conn: Connection, rtype: str, rid: str, body: dict[str, Any]) -> None:
    _drop_index(conn, rtype, rid)
    rows: dict[Any, list[dict[str, Any]]] = {t: [] for t in INDEX_TABLES}
    key = {"res_type": rtype, "res_id": rid}
    for param in searchparams.PARAMS.get(rtype, {}).values():
        if param.kind == "token":
            for system, code in set(searchparams.tokens(body, param)):
                rows[search_token].append(
                    {**key, "param": param.name, "system": system, "code": code[:255]}
                )
        elif param.kind == "string":
            for text in set(searchparams.strings(body, param)):
                rows[search_string].append(
                    {
                        **key,
                        "param": param.name,
                        "value": searchparams.normalise(text)[:255],
                        "raw": text[:255],
                    }
                )
        elif param.kind == "date":
            for value in searchparams.values(body, param):
                span = fhirdates.value_range(value)
                if span:
                    rows[search_date].append(
                        {**key, "param": param.name, "low": span[0], "high": span[1]}
                    )
        elif param.kind == "reference":
            for target_type, target_id in set(searchparams.references(body, param)):
                rows[search_reference].append(
                    {
                        **key,
                        "param": param.name,
                        "target_type": target_type,
                        "target_id": target_id[:255],
                    }
                )
    for table, batch in rows.items():
        if batch:
            conn.execute(insert(table), batch)


def _drop_index(conn: Connection, rtype: str, rid: str) -> None:
    for table in INDEX_TABLES:
        conn.execute(delete(table).where(table.c.res_type == rtype, table.c.res_id == rid))


def _now() -> datetime:
    when = fhirdates.now()
    return when.replace(microsecond=when.microsecond // 1000 * 1000)
