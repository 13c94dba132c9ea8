"""The CapabilityStatement at /fhir/metadata, generated from what is really implemented."""

from __future__ import annotations

from functools import cache
from typing import Any

from records import fhirtypes, query, searchparams

_KIND = {"token": "token", "string": "string", "date": "date", "reference": "reference"}
_WRITE = ["create", "update", "delete"]
_READ = ["read", "vread", "history-instance", "history-type", "search-type"]


@cache
def _resources() -> list[dict[str, Any]]:
    out = []
    for rtype in sorted(fhirtypes.ALL_TYPES):
        read_only = rtype in fhirtypes.READ_ONLY_TYPES
        interactions = ["read", "search-type"] if read_only else _READ + _WRITE
        params = [
            {"name": p.name, "type": _KIND[p.kind]}
            for p in searchparams.PARAMS.get(rtype, {}).values()
        ]
        params.append({"name": "_id", "type": "token"})
        params.append({"name": "_lastUpdated", "type": "date"})
        if "patient" in query.known_params(rtype):
            params.append({"name": "patient", "type": "reference"})
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": code} for code in interactions],
            "versioning": "versioned",
            "readHistory": not read_only,
            "updateCreate": not read_only,
            "conditionalCreate": not read_only,
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": sorted(params, key=lambda p: p["name"]),
        }
        if (
            not read_only
            and rtype in searchparams.PARAMS
            and any(p.kind == "reference" for p in searchparams.PARAMS[rtype].values())
        ):
            entry["searchInclude"] = [
                f"{rtype}:{p.name}"
                for p in searchparams.PARAMS[rtype].values()
                if p.kind == "reference"
            ]
        if rtype == "Patient":
            entry["operation"] = [
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                },
                {
                    "name": "match",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
                },
                {
                    "name": "merge",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-merge",
                },
            ]
        out.append(entry)
    return out


def statement(base: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "publisher": "Yilian",
        "kind": "instance",
        "software": {"name": "Yilian gateway", "version": _version()},
        "implementation": {"description": "Yilian consortium gateway (医联)", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "OAuth",
                                    "display": "OAuth",
                                }
                            ]
                        }
                    ],
                    "description": (
                        "OAuth2 bearer tokens from POST /auth/token "
                        "(password and client_credentials grants)"
                    ),
                },
                "resource": _resources(),
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                ],
                "searchParam": [
                    {"name": "_count", "type": "number"},
                    {"name": "_sort", "type": "string"},
                    {"name": "_include", "type": "string"},
                    {"name": "_revinclude", "type": "string"},
                    {"name": "_summary", "type": "token"},
                ],
            }
        ],
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("yilian-gateway")
    except PackageNotFoundError:
        return "0.0.0+source"
