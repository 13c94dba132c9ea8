"""The role-based access rules of security.access.AccessPolicy."""

from __future__ import annotations

import pytest

from security.access import (
    CLINICAL_TYPES,
    DIRECTORY_TYPES,
    EVERYTHING,
    FINANCIAL_TYPES,
    READS,
    WRITES,
    AccessPolicy,
    Action,
    Decision,
    PatientSet,
    Scope,
)
from security.principal import SYSTEM, Principal, Role

POLICY = AccessPolicy()
RESIDENT = Principal("resident.zhao", Role.RESIDENT, "XINGFU_THC", patient_id="42")
DOCTOR = Principal("doctor.xingfu", Role.TOWNSHIP_DOCTOR, "XINGFU_THC", practitioner_id="P7")
SPECIALIST = Principal("dr.li", Role.SPECIALIST, "COUNTY_HOSPITAL", practitioner_id="P9")
INSURER = Principal("nhsa.clerk", Role.INSURER, "COUNTY_NHSA")
ADMIN = Principal("admin", Role.ADMIN, "COUNTY_HOSPITAL")

ALL_ACTIONS = list(Action)
READ_ACTIONS = sorted(READS)
WRITE_ACTIONS = sorted(WRITES)


def decide(who: Principal, rtype: str, action: Action) -> Decision:
    return POLICY.decide(who, rtype, action)


def allowed(who: Principal, rtype: str, action: Action) -> bool:
    return decide(who, rtype, action).allowed


def test_action_sets_partition_the_actions() -> None:
    assert READS | WRITES == set(Action)
    assert not READS & WRITES


def test_denial_has_a_reason_and_no_scope() -> None:
    denied = decide(ADMIN, "Patient", Action.READ)
    assert denied.allowed is False
    assert denied.reason
    assert denied.scope == EVERYTHING


def test_scope_unrestricted() -> None:
    assert EVERYTHING.unrestricted
    assert not Scope(patients=PatientSet()).unrestricted
    assert not Scope(include_unowned=False).unrestricted
    assert not Scope(reference=("insurer", "Organization/X")).unrestricted


# -- resident ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rtype", sorted(CLINICAL_TYPES | DIRECTORY_TYPES | FINANCIAL_TYPES))
@pytest.mark.parametrize("action", WRITE_ACTIONS)
def test_resident_writes_nothing(rtype: str, action: Action) -> None:
    assert not allowed(RESIDENT, rtype, action)


@pytest.mark.parametrize("rtype", ["Patient", "Observation", "Encounter", "Coverage", "Claim"])
@pytest.mark.parametrize("action", READ_ACTIONS)
def test_resident_reads_only_their_own_compartment(rtype: str, action: Action) -> None:
    decision = decide(RESIDENT, rtype, action)
    assert decision.allowed
    assert decision.scope == Scope(
        patients=PatientSet(ids=frozenset({"42"})), include_unowned=False
    )


def test_resident_sees_their_own_audit_events_only() -> None:
    decision = decide(RESIDENT, "AuditEvent", Action.SEARCH)
    assert decision.allowed
    assert decision.scope.patients == PatientSet(ids=frozenset({"42"}))
    assert decision.scope.include_unowned is False


def test_resident_without_a_patient_sees_nobody() -> None:
    orphan = Principal("resident.nobody", Role.RESIDENT, "XINGFU_THC")
    decision = decide(orphan, "Observation", Action.SEARCH)
    assert decision.allowed
    assert decision.scope.patients == PatientSet()
    assert decision.scope.patients is not None
    assert decision.scope.include_unowned is False


@pytest.mark.parametrize("rtype", sorted(DIRECTORY_TYPES))
@pytest.mark.parametrize("action", READ_ACTIONS)
def test_resident_reads_the_directory(rtype: str, action: Action) -> None:
    decision = decide(RESIDENT, rtype, action)
    assert decision.allowed
    assert decision.scope.unrestricted


# -- township doctor ---------------------------------------------------------------------------

DOCTOR_SCOPE = Scope(patients=PatientSet(managed_by="XINGFU_THC", requested_by="P7"))


@pytest.mark.parametrize("rtype", sorted(CLINICAL_TYPES) + ["Coverage", "Claim"])
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_township_doctor_works_on_their_own_patients(rtype: str, action: Action) -> None:
    decision = decide(DOCTOR, rtype, action)
    assert decision.allowed
    assert decision.scope == DOCTOR_SCOPE


@pytest.mark.parametrize("rtype", ["ClaimResponse", "ExplanationOfBenefit"])
def test_township_doctor_reads_but_does_not_write_insurer_replies(rtype: str) -> None:
    assert decide(DOCTOR, rtype, Action.READ).scope == DOCTOR_SCOPE
    for action in WRITE_ACTIONS:
        assert not allowed(DOCTOR, rtype, action)


@pytest.mark.parametrize("rtype", sorted(DIRECTORY_TYPES))
def test_township_doctor_reads_but_does_not_write_the_directory(rtype: str) -> None:
    for action in READ_ACTIONS:
        assert decide(DOCTOR, rtype, action) == Decision(True)
    for action in WRITE_ACTIONS:
        assert not allowed(DOCTOR, rtype, action)


def test_township_doctor_cannot_create_organization() -> None:
    denied = decide(DOCTOR, "Organization", Action.CREATE)
    assert not denied.allowed
    assert "administrators" in denied.reason


@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_township_doctor_reads_no_audit_events(action: Action) -> None:
    assert not allowed(DOCTOR, "AuditEvent", action)


def test_doctor_scope_uses_own_organization_and_practitioner() -> None:
    other = Principal("doctor.hehua", Role.TOWNSHIP_DOCTOR, "HEHUA_THC", practitioner_id="P8")
    scope = decide(other, "Observation", Action.SEARCH).scope
    assert scope.patients == PatientSet(managed_by="HEHUA_THC", requested_by="P8")


# -- specialist --------------------------------------------------------------------------------

SPECIALIST_SCOPE = Scope(patients=PatientSet(routed_to="COUNTY_HOSPITAL"))


@pytest.mark.parametrize("rtype", sorted(CLINICAL_TYPES))
@pytest.mark.parametrize("action", READ_ACTIONS)
def test_specialist_reads_what_was_routed_to_their_hospital(rtype: str, action: Action) -> None:
    decision = decide(SPECIALIST, rtype, action)
    assert decision.allowed
    assert decision.scope == SPECIALIST_SCOPE


@pytest.mark.parametrize("rtype", ["DiagnosticReport", "Observation", "Task", "Provenance"])
def test_specialist_writes_reports(rtype: str) -> None:
    decision = decide(SPECIALIST, rtype, Action.CREATE)
    assert decision.allowed
    assert decision.scope == SPECIALIST_SCOPE


@pytest.mark.parametrize("rtype", ["Patient", "Encounter", "ServiceRequest", "Consent"])
def test_specialist_does_not_write_registration_or_orders(rtype: str) -> None:
    for action in WRITE_ACTIONS:
        assert not allowed(SPECIALIST, rtype, action)


@pytest.mark.parametrize("rtype", sorted(FINANCIAL_TYPES) + ["AuditEvent"])
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_specialist_sees_no_financial_or_audit_data(rtype: str, action: Action) -> None:
    assert not allowed(SPECIALIST, rtype, action)


def test_specialist_does_not_write_the_directory() -> None:
    assert allowed(SPECIALIST, "Practitioner", Action.READ)
    assert not allowed(SPECIALIST, "Practitioner", Action.UPDATE)


# -- insurer -----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", READ_ACTIONS)
def test_insurer_reads_demographics_of_their_insured(action: Action) -> None:
    decision = decide(INSURER, "Patient", action)
    assert decision.allowed
    assert decision.scope == Scope(
        patients=PatientSet(insured_by="COUNTY_NHSA"), include_unowned=False
    )


@pytest.mark.parametrize("action", WRITE_ACTIONS)
def test_insurer_does_not_write_patients(action: Action) -> None:
    assert not allowed(INSURER, "Patient", action)


@pytest.mark.parametrize(
    "rtype,param",
    [
        ("Claim", "insurer"),
        ("ClaimResponse", "insurer"),
        ("ExplanationOfBenefit", "insurer"),
        ("Coverage", "payor"),
    ],
)
def test_insurer_financial_reads_are_filtered_by_their_reference(rtype: str, param: str) -> None:
    decision = decide(INSURER, rtype, Action.SEARCH)
    assert decision.allowed
    assert decision.scope == Scope(reference=(param, "Organization/COUNTY_NHSA"))
    assert decision.scope.patients is None


def test_insurer_claim_filter() -> None:
    scope = decide(INSURER, "Claim", Action.READ).scope
    assert scope.reference == ("insurer", "Organization/COUNTY_NHSA")


def test_insurer_writes_replies_not_claims() -> None:
    assert allowed(INSURER, "ClaimResponse", Action.CREATE)
    assert allowed(INSURER, "ExplanationOfBenefit", Action.UPDATE)
    assert allowed(INSURER, "Coverage", Action.CREATE)
    assert not allowed(INSURER, "Claim", Action.CREATE)
    assert not allowed(INSURER, "Claim", Action.UPDATE)


@pytest.mark.parametrize(
    "rtype", ["Observation", "Encounter", "DiagnosticReport", "ImagingStudy", "AuditEvent"]
)
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_insurer_sees_no_clinical_data(rtype: str, action: Action) -> None:
    assert not allowed(INSURER, rtype, action)


def test_insurer_reads_the_directory() -> None:
    assert decide(INSURER, "Organization", Action.READ) == Decision(True)
    assert not allowed(INSURER, "Organization", Action.UPDATE)


# -- admin and system --------------------------------------------------------------------------


@pytest.mark.parametrize("rtype", sorted(DIRECTORY_TYPES))
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_admin_manages_the_directory(rtype: str, action: Action) -> None:
    decision = decide(ADMIN, rtype, action)
    assert decision.allowed
    assert decision.scope.unrestricted


@pytest.mark.parametrize("rtype", sorted(CLINICAL_TYPES | FINANCIAL_TYPES))
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_admin_reads_no_clinical_or_financial_data(rtype: str, action: Action) -> None:
    assert not allowed(ADMIN, rtype, action)


def test_admin_reads_but_does_not_write_audit_events() -> None:
    for action in READ_ACTIONS:
        decision = decide(ADMIN, "AuditEvent", action)
        assert decision.allowed
        assert decision.scope.unrestricted
    for action in WRITE_ACTIONS:
        assert not allowed(ADMIN, "AuditEvent", action)


@pytest.mark.parametrize("rtype", ["Patient", "Claim", "AuditEvent", "Organization"])
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_system_is_unrestricted(rtype: str, action: Action) -> None:
    decision = decide(SYSTEM, rtype, action)
    assert decision.allowed
    assert decision.scope.unrestricted


# -- DICOM devices (C-FIND, C-GET, C-MOVE callers) ---------------------------------------------

WORKSTATION = Principal("dicom:CITY_WS", Role.DEVICE, "CITY_FIRST")


@pytest.mark.parametrize("rtype", ["ImagingStudy", "Patient", "Observation"])
def test_device_reads_its_organizations_and_routed_patients(rtype: str) -> None:
    decision = decide(WORKSTATION, rtype, Action.SEARCH)
    assert decision.allowed
    assert decision.scope.patients == PatientSet(managed_by="CITY_FIRST", routed_to="CITY_FIRST")
    assert not decision.scope.include_unowned


@pytest.mark.parametrize("action", WRITE_ACTIONS)
def test_device_writes_nothing(action: Action) -> None:
    assert not allowed(WORKSTATION, "ImagingStudy", action)


@pytest.mark.parametrize("rtype", ["Claim", "AuditEvent"])
def test_device_reads_no_financial_or_audit_data(rtype: str) -> None:
    assert not allowed(WORKSTATION, rtype, Action.READ)


def test_device_of_no_organization_sees_nobody() -> None:
    decision = decide(Principal("dicom:X", Role.DEVICE), "ImagingStudy", Action.SEARCH)
    assert decision.allowed and decision.scope.patients == PatientSet()


# -- notifications (Communication) and Subscriptions --------------------------------------------

DEVICE = Principal("XINGFU_CT", Role.DEVICE, "XINGFU_THC")
PEER = Principal("city-first-gateway", Role.PEER, "CITY_FIRST")


@pytest.mark.parametrize("action", READ_ACTIONS + [Action.UPDATE])
def test_a_notification_is_read_and_marked_read_by_its_recipient_only(action: Action) -> None:
    doctor = decide(DOCTOR, "Communication", action)
    assert doctor.allowed
    assert doctor.scope.reference == ("recipient", "Practitioner/P7")
    assert doctor.scope.patients == PatientSet(managed_by="XINGFU_THC", requested_by="P7")
    specialist = decide(SPECIALIST, "Communication", action)
    assert specialist.scope.reference == ("recipient", "Practitioner/P9")
    assert specialist.scope.patients == PatientSet(routed_to="COUNTY_HOSPITAL")
    resident = decide(RESIDENT, "Communication", action)
    assert resident.scope == Scope(
        patients=PatientSet(ids=frozenset({"42"})),
        include_unowned=False,
        reference=("recipient", "Patient/42"),
    )


@pytest.mark.parametrize("who", [DOCTOR, SPECIALIST, RESIDENT])
@pytest.mark.parametrize("action", [Action.CREATE, Action.DELETE])
def test_only_the_gateway_writes_or_removes_a_notification(who: Principal, action: Action) -> None:
    assert not allowed(who, "Communication", action)
    assert allowed(SYSTEM, "Communication", action)


@pytest.mark.parametrize("who", [ADMIN, INSURER, DEVICE, PEER])
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_others_read_no_notifications(who: Principal, action: Action) -> None:
    assert not allowed(who, "Communication", action)


def test_an_account_that_is_no_practitioner_receives_nothing() -> None:
    nobody = Principal("doctor.new", Role.TOWNSHIP_DOCTOR, "XINGFU_THC")
    decision = decide(nobody, "Communication", Action.SEARCH)
    assert decision.allowed
    assert decision.scope == Scope(patients=PatientSet(), include_unowned=False)


@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_admin_manages_every_subscription(action: Action) -> None:
    assert decide(ADMIN, "Subscription", action) == Decision(True)


@pytest.mark.parametrize("who", [DOCTOR, SPECIALIST])
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_a_clinician_has_their_own_subscriptions(who: Principal, action: Action) -> None:
    decision = decide(who, "Subscription", action)
    assert decision.allowed
    assert decision.scope == Scope(reference=("owner", f"Practitioner/{who.practitioner_id}"))


@pytest.mark.parametrize(
    "who",
    [RESIDENT, INSURER, DEVICE, PEER, Principal("d", Role.TOWNSHIP_DOCTOR, "XINGFU_THC")],
)
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_others_make_no_subscriptions(who: Principal, action: Action) -> None:
    assert not allowed(who, "Subscription", action)
