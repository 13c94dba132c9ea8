"""Transaction and batch Bundles (FHIR R4 http.html#transaction).

A transaction is one unit of work: entries run in the order the specification sets (DELETE,
POST, PUT, GET), ``urn:uuid:`` full URLs are replaced by the ids they were given, and any
failure rolls the whole Bundle back. A batch runs each entry on its own and reports each
outcome in its response entry.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy import Connection

from records import ids, query
from records.audit_log import Event
from records.errors import FhirError, Invalid, NotSupported
from records.service import RecordService
from records.store import Stored
from security.access import Action
from security.principal import Principal

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


def process(service: RecordService, who: Principal, bundle: Any) -> dict[str, Any]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise Invalid("POST /fhir expects a Bundle of type transaction or batch")
    kind = bundle.get("type")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise Invalid("Bundle.entry must be a list", expression=["Bundle.entry"])
    for index, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or not request.get("method") or not request.get("url"):
            raise Invalid(
                f"Bundle.entry[{index}].request needs a method and a url",
                expression=[f"Bundle.entry[{index}].request"],
            )
    if kind == "transaction":
        return _transaction(service, who, entries)
    if kind == "batch":
        return _batch(service, who, entries)
    raise Invalid(
        f"Bundle.type must be transaction or batch, not '{kind}'", expression=["Bundle.type"]
    )


def _transaction(service: RecordService, who: Principal, entries: list[Any]) -> dict[str, Any]:
    order = sorted(
        range(len(entries)), key=lambda i: _ORDER.get(entries[i]["request"]["method"], 9)
    )
    # Give every POST its id first, so references between entries can be resolved.
    assigned: dict[str, str] = {}
    for i in order:
        entry = entries[i]
        if entry["request"]["method"] == "POST" and isinstance(entry.get("resource"), dict):
            rtype = entry["resource"].get("resourceType", "")
            new = f"{rtype}/{ids.new_id()}"
            if entry.get("fullUrl"):
                assigned[entry["fullUrl"]] = new

    def work(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
        responses: list[dict[str, Any] | None] = [None] * len(entries)
        events: list[Event] = []
        deferred: list[Any] = []
        for i in order:
            entry = _resolve(entries[i], assigned)
            try:
                responses[i], event = _entry(service, conn, who, entry, assigned, deferred)
            except FhirError as exc:
                exc.diagnostics = f"Bundle.entry[{i}]: {exc.diagnostics}"
                raise
            events.append(event)
        service.check_deferred(conn, deferred)
        return _response_bundle("transaction-response", responses), events

    return service.run(who, "transaction", work, about=["Bundle"])


def _batch(service: RecordService, who: Principal, entries: list[Any]) -> dict[str, Any]:
    responses: list[dict[str, Any] | None] = []
    for entry in entries:

        def work(conn: Connection, entry: Any = entry) -> tuple[dict[str, Any], list[Event]]:
            response, event = _entry(service, conn, who, entry, {})
            return response, [event]

        try:
            responses.append(service.run(who, "batch", work, about=[entry["request"]["url"]]))
        except FhirError as exc:
            responses.append(
                {"response": {"status": _status(exc.status), "outcome": exc.outcome()}}
            )
    return _response_bundle("batch-response", responses)


def _entry(
    service: RecordService,
    conn: Connection,
    who: Principal,
    entry: dict[str, Any],
    assigned: dict[str, str],
    deferred: list[Any] | None = None,
) -> tuple[dict[str, Any], Event]:
    request = entry["request"]
    method = request["method"].upper()
    url = urlsplit(request["url"])
    path = [p for p in url.path.strip("/").split("/") if p]
    body = entry.get("resource")
    if method == "POST" and len(path) == 1:
        rtype = path[0]
        rid = None
        if entry.get("fullUrl") in assigned:
            rid = assigned[entry["fullUrl"]].split("/", 1)[1]
        stored, created = service.create_in(
            conn,
            who,
            rtype,
            body,
            if_none_exist=request.get("ifNoneExist"),
            rid=rid,
            deferred=deferred,
        )
        if not created and entry.get("fullUrl") in assigned:
            assigned[entry["fullUrl"]] = f"{rtype}/{stored.res_id}"
        status = "201 Created" if created else "200 OK"
        return _stored_entry(stored, status), _event("create" if created else "read", stored)
    if method == "PUT" and len(path) == 2:
        stored, created = service.update_in(
            conn, who, path[0], path[1], body, if_match=request.get("ifMatch"), deferred=deferred
        )
        status = "201 Created" if created else "200 OK"
        return _stored_entry(stored, status), _event("create" if created else "update", stored)
    if method == "DELETE" and len(path) == 2:
        removed = service.delete_in(conn, who, path[0], path[1])
        event = Event(
            "delete",
            (f"{path[0]}/{path[1]}",),
            (removed.patient_id,) if removed and removed.patient_id else (),
        )
        return {"response": {"status": "204 No Content"}}, event
    if method == "GET" and len(path) == 2:
        scope = service.scope(who, path[0], Action.READ)
        found = service._visible_current(conn, path[0], path[1], scope)
        return _stored_entry(found, "200 OK", with_resource=True), _event("read", found)
    if method == "GET" and len(path) == 1:
        req = query.parse(
            path[0],
            parse_qsl(url.query),
            default_count=service.default_count,
            max_count=service.max_count,
        )
        result = service._search_in(conn, who, req)
        inner = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": result.total,
            "entry": [{"resource": s.json(), "search": {"mode": "match"}} for s in result.matches],
        }
        touched = [(f"{s.res_type}/{s.res_id}", s.patient_id) for s in result.matches]
        response = {"resource": inner, "response": {"status": "200 OK"}}
        return response, Event.touching("search", touched or [(path[0], None)])
    raise NotSupported(f"{method} {request['url']} is not supported inside a Bundle")


def _resolve(entry: dict[str, Any], assigned: dict[str, str]) -> dict[str, Any]:
    """Replace urn:uuid references (anywhere in the entry) with the ids assigned to them."""
    if not assigned:
        return entry
    text = json.dumps(entry, ensure_ascii=False)
    for full_url, ref in assigned.items():
        text = text.replace(json.dumps(full_url, ensure_ascii=False), json.dumps(ref))
    resolved: dict[str, Any] = json.loads(text)
    resolved["fullUrl"] = entry.get("fullUrl")  # keep the key used to look the id up
    return resolved


def _event(action: str, stored: Stored) -> Event:
    return Event(
        action,
        (f"{stored.res_type}/{stored.res_id}",),
        (stored.patient_id,) if stored.patient_id else (),
    )


def _stored_entry(stored: Stored, status: str, *, with_resource: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "response": {
            "status": status,
            "location": f"{stored.res_type}/{stored.res_id}/_history/{stored.version}",
            "etag": stored.etag,
            "lastModified": stored.json()["meta"]["lastUpdated"],
        }
    }
    if with_resource:
        entry = {
            "fullUrl": f"{stored.res_type}/{stored.res_id}",
            "resource": stored.json(),
            **entry,
        }
    return entry


def _response_bundle(kind: str, responses: list[dict[str, Any] | None]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [r or {} for r in responses]}


def _status(code: int) -> str:
    reasons = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        409: "Conflict",
        410: "Gone",
        412: "Precondition Failed",
        422: "Unprocessable Entity",
    }
    return f"{code} {reasons.get(code, '')}".strip()
