"""FHIR on HTTP: media type, request bodies, Bundles and OperationOutcome responses."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from records.errors import FhirError, Invalid, operation_outcome
from records.query import SearchRequest
from records.store import Stored

FHIR_JSON = "application/fhir+json; charset=utf-8"


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        if isinstance(content, str):
            return content.encode()
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def error_response(exc: FhirError) -> FhirResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="yilian"'} if exc.status == 401 else None
    return FhirResponse(exc.outcome(), status_code=exc.status, headers=headers)


def outcome_response(status: int, code: str, diagnostics: str) -> FhirResponse:
    return FhirResponse(operation_outcome(code, diagnostics), status_code=status)


async def read_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise Invalid("the request has no body; send one FHIR resource as JSON")
    content_type = request.headers.get("content-type", "")
    if content_type and "json" not in content_type:
        raise Invalid(f"send application/fhir+json, not {content_type.split(';')[0]}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(f"the body is not valid JSON: {exc}") from None


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def resource_response(stored: Stored, request: Request, status: int = 200) -> Response:
    headers = {
        "ETag": stored.etag,
        "Last-Modified": stored.last_updated.strftime("%a, %d %b %Y %H:%M:%S GMT"),
    }
    if status == 201:
        headers["Location"] = (
            f"{base_url(request)}/{stored.res_type}/{stored.res_id}/_history/{stored.version}"
        )
    prefer = request.headers.get("prefer", "")
    if "return=minimal" in prefer:
        return Response(status_code=status, headers=headers)
    assert stored.content is not None
    return FhirResponse(stored.content, status_code=status, headers=headers)


def searchset(
    request: Request,
    rtype: str,
    req: SearchRequest,
    matches: list[Stored],
    included: list[Stored],
    total: int,
) -> dict[str, Any]:
    base = base_url(request)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": _page_url(base, rtype, req, req.offset)}],
    }
    if not req.summary_count:
        if req.offset + req.count < total:
            bundle["link"].append(
                {"relation": "next", "url": _page_url(base, rtype, req, req.offset + req.count)}
            )
        if req.offset > 0:
            bundle["link"].append(
                {
                    "relation": "previous",
                    "url": _page_url(base, rtype, req, max(0, req.offset - req.count)),
                }
            )
        bundle["entry"] = [_entry(base, s, "match") for s in matches] + [
            _entry(base, s, "include") for s in included
        ]
    return bundle


def _entry(base: str, stored: Stored, mode: str) -> dict[str, Any]:
    return {
        "fullUrl": f"{base}/{stored.res_type}/{stored.res_id}",
        "resource": stored.json(),
        "search": {"mode": mode},
    }


def _page_url(base: str, rtype: str, req: SearchRequest, offset: int) -> str:
    params = [(k, v) for k, v in req.echoed if k not in ("_offset", "_count")]
    params += [("_count", str(req.count)), ("_offset", str(offset))]
    return f"{base}/{rtype}?{urlencode(params)}"


def history_bundle(request: Request, entries: list[tuple[Stored, str]]) -> dict[str, Any]:
    base = base_url(request)
    out = []
    for stored, method in entries:
        url = f"{base}/{stored.res_type}/{stored.res_id}"
        entry: dict[str, Any] = {
            "fullUrl": url,
            "request": {
                "method": method,
                "url": f"{stored.res_type}/{stored.res_id}"
                if method != "POST"
                else stored.res_type,
            },
            "response": {
                "status": "204 No Content"
                if stored.deleted
                else ("201 Created" if method == "POST" else "200 OK"),
                "etag": stored.etag,
            },
        }
        if not stored.deleted:
            entry["resource"] = stored.json()
        out.append(entry)
    return {"resourceType": "Bundle", "type": "history", "total": len(out), "entry": out}
