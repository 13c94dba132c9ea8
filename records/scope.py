"""Turn an access :class:`security.access.Scope` into SQL over the resource table.

This is the one place where 'which rows may this principal see' becomes a WHERE clause;
reads, searches, includes, history and $everything all go through it.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, false, or_, select, true

from records.schema import resource, search_reference
from security.access import PatientSet, Scope


def _patients_referenced_by(rtype: str, param: str, target_type: str, target_id: str):  # type: ignore[no-untyped-def]
    owner = resource.alias("owner")
    ref = search_reference
    return (
        select(owner.c.patient_id)
        .join(ref, (ref.c.res_type == owner.c.res_type) & (ref.c.res_id == owner.c.res_id))
        .where(
            owner.c.res_type == rtype,
            owner.c.deleted.is_(False),
            owner.c.patient_id.is_not(None),
            ref.c.param == param,
            ref.c.target_type == target_type,
            ref.c.target_id == target_id,
        )
    )


def patient_set_clause(patients: PatientSet, column: ColumnElement[str]) -> ColumnElement[bool]:
    """A condition on a column holding a Patient id."""
    clauses: list[ColumnElement[bool]] = []
    if patients.ids:
        clauses.append(column.in_(sorted(patients.ids)))
    if patients.managed_by:
        p = resource.alias("managed")
        clauses.append(
            column.in_(
                select(p.c.res_id).where(
                    p.c.res_type == "Patient",
                    p.c.org_id == patients.managed_by,
                )
            )
        )
    if patients.requested_by:
        clauses.append(
            column.in_(
                _patients_referenced_by(
                    "ServiceRequest", "requester", "Practitioner", patients.requested_by
                )
            )
        )
    if patients.routed_to:
        clauses.append(
            column.in_(
                _patients_referenced_by(
                    "ServiceRequest", "performer", "Organization", patients.routed_to
                ).union(
                    _patients_referenced_by("Task", "owner", "Organization", patients.routed_to)
                )
            )
        )
    if patients.insured_by:
        clauses.append(
            column.in_(
                _patients_referenced_by("Coverage", "payor", "Organization", patients.insured_by)
            )
        )
    return or_(*clauses) if clauses else false()


def scope_clause(scope: Scope, rtype: str) -> ColumnElement[bool]:
    """Condition on ``resource`` rows of type ``rtype`` visible within the scope."""
    parts: list[ColumnElement[bool]] = []
    if scope.patients is not None:
        visible = patient_set_clause(scope.patients, resource.c.patient_id)
        if scope.include_unowned:
            visible = or_(resource.c.patient_id.is_(None), visible)
        parts.append(visible)
    elif not scope.include_unowned:
        parts.append(resource.c.patient_id.is_not(None))
    if scope.reference is not None:
        param, target = scope.reference
        target_type, _, target_id = target.partition("/")
        ref = search_reference
        parts.append(
            resource.c.res_id.in_(
                select(ref.c.res_id).where(
                    ref.c.res_type == rtype,
                    ref.c.param == param,
                    ref.c.target_type == target_type,
                    ref.c.target_id == target_id,
                )
            )
        )
    if not parts:
        return true()
    clause = parts[0]
    for part in parts[1:]:
        clause = clause & part
    return clause
