"""The resource types the record holds, and their validation with fhir.resources R4B models.

What is stored is the JSON the client sent (after validation) plus the server-owned ``id`` and
``meta``: round-tripping through the models would reformat decimals and dates, and Chinese
text must come back byte for byte.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from records import r4schema
from records.errors import Invalid, Unprocessable

STORED_TYPES = frozenset(
    {
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Location",
        "Endpoint",
        "HealthcareService",
        "Encounter",
        "Observation",
        "DiagnosticReport",
        "ServiceRequest",
        "Task",
        "ImagingStudy",
        "DocumentReference",
        "Appointment",
        "Coverage",
        "Claim",
        "ClaimResponse",
        "ExplanationOfBenefit",
        "Consent",
        "Provenance",
        "Binary",
        "Device",  # imaging modalities, ECG carts, workstations: their DICOM AE titles
        "Communication",  # notifications the gateway writes to a doctor (teleconsult.notify)
        "Subscription",  # R4 rest-hook subscriptions (teleconsult.subscription)
    }
)
READ_ONLY_TYPES = frozenset({"AuditEvent"})  # generated from the audit chain
ALL_TYPES = STORED_TYPES | READ_ONLY_TYPES

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# Consortium members are named by codes such as XINGFU_THC (the HL7 sending facility); the code
# is the Organization's identifier in this system and, with '_' made '-', its FHIR id.
ORG_CODE_SYSTEM = "urn:yilian:org"


def organization_id(code: str) -> str:
    """XINGFU_THC -> XINGFU-THC (FHIR ids allow letters, digits, '-' and '.')."""
    return code.replace("_", "-")


@cache
def model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def check_type(resource_type: str) -> None:
    if resource_type not in ALL_TYPES:
        raise Invalid(
            f"resource type '{resource_type}' is not supported here; see /fhir/metadata",
            expression=[resource_type],
        )


def check_id(resource_id: str) -> None:
    if not ID_PATTERN.match(resource_id):
        raise Invalid(
            f"'{resource_id}' is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)",
            expression=["id"],
        )


def validate(resource_type: str, body: Any, *, models: bool = True) -> dict[str, Any]:
    """Check a resource; return the body unchanged when it is valid.

    Always against the official R4 JSON schema (``records.r4schema``, fast); with ``models``
    also against the fhir.resources R4B model (about 1 ms a resource: the FHIR API does it for
    what clients send, the ingest of its own translations leaves it out).
    """
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object holding one FHIR resource")
    found = body.get("resourceType")
    if found != resource_type:
        raise Invalid(
            f"resourceType is '{found}' but the URL names '{resource_type}'",
            expression=["resourceType"],
        )
    problems = r4schema.errors(body)
    if problems:
        expressions = [p.split(":", 1)[0] for p in problems]
        raise Unprocessable("; ".join(problems), expression=expressions)
    if not models:
        return body
    try:
        model(resource_type).model_validate(body)
    except ValidationError as exc:
        problems = []
        expressions = []
        for error in exc.errors()[:10]:
            path = _fhirpath(resource_type, error["loc"])
            expressions.append(path)
            problems.append(f"{path}: {error['msg']}")
        raise Unprocessable("; ".join(problems), expression=expressions) from None
    except (ValueError, TypeError) as exc:
        raise Unprocessable(f"{resource_type}: {exc}") from None
    return body


def _fhirpath(resource_type: str, loc: tuple[Any, ...]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "__root__":
            out += f".{part}"
    return out
