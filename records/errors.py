"""Refusals of the records boundary, each mapped once to an HTTP status and an OperationOutcome."""

from __future__ import annotations

from typing import Any


class FhirError(Exception):
    """A refusal with the HTTP status and the FHIR issue type it maps to."""

    status = 400
    code = "invalid"

    def __init__(self, diagnostics: str, *, expression: list[str] | None = None) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.expression = expression or []

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.code, self.diagnostics, self.expression)


class Invalid(FhirError):
    status, code = 400, "invalid"


class Unprocessable(FhirError):
    status, code = 422, "processing"


class NotFound(FhirError):
    status, code = 404, "not-found"


class Gone(FhirError):
    status, code = 410, "deleted"


class Forbidden(FhirError):
    status, code = 403, "forbidden"


class Unauthorized(FhirError):
    status, code = 401, "login"


class Conflict(FhirError):
    status, code = 409, "conflict"


class PreconditionFailed(FhirError):
    status, code = 412, "conflict"


class NotSupported(FhirError):
    status, code = 400, "not-supported"


class MethodNotAllowed(FhirError):
    status, code = 405, "not-supported"


class NotAcceptable(FhirError):
    status, code = 406, "not-supported"


class UnsupportedMediaType(FhirError):
    status, code = 415, "not-supported"


class TooLarge(FhirError):
    status, code = 413, "too-costly"


class StorageFault(FhirError):
    """Ours: what the index promises is not in storage (the operator must look)."""

    status, code = 500, "exception"


def operation_outcome(
    code: str,
    diagnostics: str,
    expression: list[str] | None = None,
    severity: str = "error",
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}
