"""The FHIR R4 REST API at /fhir: decode HTTP, call the records boundary, encode the answer."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from gateway import capability
from gateway.deps import ContextDep, PrincipalDep
from gateway.fhirhttp import (
    FhirResponse,
    history_bundle,
    read_body,
    resource_response,
    searchset,
)
from records import bundles
from records.errors import Invalid
from records.store import Stored

router = APIRouter(prefix="/fhir", tags=["FHIR R4"])


@router.get("/metadata")
def metadata(request: Request) -> FhirResponse:
    return FhirResponse(capability.statement(str(request.base_url).rstrip("/") + "/fhir"))


@router.post("")
@router.post("/")
async def transaction(request: Request, ctx: ContextDep, who: PrincipalDep) -> FhirResponse:
    body = await read_body(request)
    result = await run_in_threadpool(bundles.process, ctx.records, who, body)
    return FhirResponse(result)


@router.get("/_history")
def system_history(
    request: Request,
    ctx: ContextDep,
    who: PrincipalDep,
    _since: str | None = None,
    _count: int | None = None,
) -> FhirResponse:
    entries = ctx.records.history(who, None, None, since=_since, count=_count)
    return FhirResponse(history_bundle(request, entries))


@router.post("/Patient/$match")
async def patient_match(request: Request, ctx: ContextDep, who: PrincipalDep) -> FhirResponse:
    params = await read_body(request)
    probe, count, only_certain = _match_parameters(params)
    matches = await run_in_threadpool(
        lambda: ctx.records.match(who, probe, count=count, only_certain=only_certain)
    )
    base = str(request.base_url).rstrip("/") + "/fhir"
    return FhirResponse(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "entry": [
                {
                    "fullUrl": f"{base}/Patient/{m.patient.res_id}",
                    "resource": m.patient.json(),
                    "search": {
                        "mode": "match",
                        "score": m.score,
                        "extension": [
                            {
                                "url": "http://hl7.org/fhir/StructureDefinition/match-grade",
                                "valueCode": m.grade,
                            }
                        ],
                    },
                }
                for m in matches
            ],
        }
    )


@router.post("/Patient/$merge")
async def patient_merge(request: Request, ctx: ContextDep, who: PrincipalDep) -> Response:
    params = await read_body(request)
    source = _reference_parameter(params, "source-patient")
    target = _reference_parameter(params, "target-patient")
    merged = await run_in_threadpool(ctx.records.merge, who, source, target)
    return resource_response(merged, request)


@router.get("/Patient/{rid}/$everything")
def patient_everything(
    request: Request, rid: str, ctx: ContextDep, who: PrincipalDep
) -> FhirResponse:
    found = ctx.records.everything(who, rid)
    base = str(request.base_url).rstrip("/") + "/fhir"
    return FhirResponse(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {
                    "fullUrl": f"{base}/{s.res_type}/{s.res_id}",
                    "resource": s.json(),
                    "search": {"mode": "match"},
                }
                for s in found
            ],
        }
    )


@router.get("/{rtype}")
def search(request: Request, rtype: str, ctx: ContextDep, who: PrincipalDep) -> FhirResponse:
    return _search(request, rtype, list(request.query_params.multi_items()), ctx, who)


@router.post("/{rtype}/_search")
async def search_post(
    request: Request, rtype: str, ctx: ContextDep, who: PrincipalDep
) -> FhirResponse:
    form = await request.form()
    items = list(request.query_params.multi_items()) + [(k, str(v)) for k, v in form.multi_items()]
    return await run_in_threadpool(_search, request, rtype, items, ctx, who)


def _search(
    request: Request, rtype: str, items: list[tuple[str, str]], ctx: Any, who: Any
) -> FhirResponse:
    lenient = "handling=lenient" in request.headers.get("prefer", "")
    result = ctx.records.search(who, rtype, items, lenient=lenient)
    return FhirResponse(
        searchset(request, rtype, result.request, result.matches, result.included, result.total)
    )


@router.post("/{rtype}")
async def create(request: Request, rtype: str, ctx: ContextDep, who: PrincipalDep) -> Response:
    body = await read_body(request)
    stored, created = await run_in_threadpool(
        lambda: ctx.records.create(
            who, rtype, body, if_none_exist=request.headers.get("if-none-exist")
        )
    )
    return resource_response(stored, request, 201 if created else 200)


@router.get("/{rtype}/_history")
def type_history(
    request: Request,
    rtype: str,
    ctx: ContextDep,
    who: PrincipalDep,
    _since: str | None = None,
    _count: int | None = None,
) -> FhirResponse:
    entries = ctx.records.history(who, rtype, None, since=_since, count=_count)
    return FhirResponse(history_bundle(request, entries))


@router.get("/{rtype}/{rid}")
def read(request: Request, rtype: str, rid: str, ctx: ContextDep, who: PrincipalDep) -> Response:
    found = ctx.records.read(who, rtype, rid)
    if isinstance(found, Stored):
        if_none_match = request.headers.get("if-none-match")
        if if_none_match and if_none_match.strip() == found.etag:
            return Response(status_code=304, headers={"ETag": found.etag})
        if rtype == "Binary" and _wants_native(request):
            return _native_binary(found)
        return resource_response(found, request)
    return FhirResponse(found)


def _wants_native(request: Request) -> bool:
    """A Binary read whose Accept names no FHIR/JSON type gets the content itself (FHIR R4
    binary.html#rest)."""
    accept = request.headers.get("accept", "")
    return bool(accept) and "json" not in accept and "*/*" not in accept


def _native_binary(stored: Stored) -> Response:
    body = stored.json()
    try:
        data = base64.b64decode(body.get("data", ""), validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"Binary/{stored.res_id} holds data that is not base64") from None
    return Response(
        data,
        media_type=body.get("contentType", "application/octet-stream"),
        headers={"ETag": stored.etag},
    )


@router.put("/{rtype}/{rid}")
async def update(
    request: Request, rtype: str, rid: str, ctx: ContextDep, who: PrincipalDep
) -> Response:
    body = await read_body(request)
    stored, created = await run_in_threadpool(
        lambda: ctx.records.update(who, rtype, rid, body, if_match=request.headers.get("if-match"))
    )
    return resource_response(stored, request, 201 if created else 200)


@router.delete("/{rtype}/{rid}")
def delete(rtype: str, rid: str, ctx: ContextDep, who: PrincipalDep) -> Response:
    removed = ctx.records.delete(who, rtype, rid)
    headers = {"ETag": removed.etag} if removed else {}
    return Response(status_code=204, headers=headers)


@router.get("/{rtype}/{rid}/_history")
def instance_history(
    request: Request,
    rtype: str,
    rid: str,
    ctx: ContextDep,
    who: PrincipalDep,
    _since: str | None = None,
    _count: int | None = None,
) -> FhirResponse:
    entries = ctx.records.history(who, rtype, rid, since=_since, count=_count)
    return FhirResponse(history_bundle(request, entries))


@router.get("/{rtype}/{rid}/_history/{vid}")
def vread(
    request: Request, rtype: str, rid: str, vid: str, ctx: ContextDep, who: PrincipalDep
) -> Response:
    if not vid.isdigit():
        raise Invalid(f"version id '{vid}' is not a number", expression=["vid"])
    return resource_response(ctx.records.vread(who, rtype, rid, int(vid)), request)


# -- operation parameters -------------------------------------------------------------------------


def _parameters(params: Any) -> list[dict[str, Any]]:
    if not isinstance(params, dict) or params.get("resourceType") != "Parameters":
        raise Invalid("this operation expects a Parameters resource")
    parameters = params.get("parameter") or []
    return [p for p in parameters if isinstance(p, dict)]


def _match_parameters(params: Any) -> tuple[Any, int, bool]:
    probe, count, only_certain = None, 10, False
    for p in _parameters(params):
        if p.get("name") == "resource":
            probe = p.get("resource")
        elif p.get("name") == "count":
            count = int(p.get("valueInteger", 10))
        elif p.get("name") == "onlyCertainMatches":
            only_certain = bool(p.get("valueBoolean", False))
    if probe is None:
        raise Invalid(
            "Patient/$match needs a 'resource' parameter holding a Patient",
            expression=["Parameters.parameter"],
        )
    return probe, max(1, min(count, 100)), only_certain


def _reference_parameter(params: Any, name: str) -> str:
    for p in _parameters(params):
        if p.get("name") == name:
            ref = (p.get("valueReference") or {}).get("reference", "")
            if ref.startswith("Patient/"):
                return ref.split("/", 1)[1]
    raise Invalid(
        f"Patient/$merge needs '{name}' as a valueReference to a Patient",
        expression=["Parameters.parameter"],
    )
