"""The access rules, in one place.

The records boundary asks :class:`AccessPolicy` what a principal may do with a resource type and
gets back a :class:`Decision`: refused outright (403), or allowed within a :class:`Scope` that
records/ turns into SQL. A row outside the scope does not exist for that principal (404), so a
resident cannot learn whether another resident's record exists.

The policy knows nothing of SQL; records/ knows nothing of roles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from security.principal import Principal, Role


class Action(StrEnum):
    READ = "read"
    SEARCH = "search"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


READS = {Action.READ, Action.SEARCH}
WRITES = {Action.CREATE, Action.UPDATE, Action.DELETE}

DIRECTORY_TYPES = frozenset(
    {
        "Organization",
        "Practitioner",
        "PractitionerRole",
        "Endpoint",
        "HealthcareService",
        "Location",
        "Device",  # imaging modalities and ECG carts: the DICOM AE titles they call with
    }
)
FINANCIAL_TYPES = frozenset({"Coverage", "Claim", "ClaimResponse", "ExplanationOfBenefit"})
CLINICAL_TYPES = frozenset(
    {
        "Patient",
        "Encounter",
        "Observation",
        "DiagnosticReport",
        "ServiceRequest",
        "Task",
        "ImagingStudy",
        "DocumentReference",
        "Appointment",
        "Consent",
        "Provenance",
        "Binary",
    }
)
AUDIT_TYPE = "AuditEvent"
# What a person is told, and how they ask to be told: notifications are Communications the
# gateway writes to one recipient (a Practitioner, or a resident's Patient); Subscriptions push
# them (R4 rest-hook). Both follow their own rules (``_communication``, ``_subscription``).
COMMUNICATION_TYPE = "Communication"
SUBSCRIPTION_TYPE = "Subscription"

# What each clinical role may write (reads follow from the scope).
_DOCTOR_WRITES = CLINICAL_TYPES | {"Coverage", "Claim"}
_SPECIALIST_WRITES = frozenset(
    {"DiagnosticReport", "Observation", "Task", "Provenance", "DocumentReference", "Binary"}
)
_INSURER_WRITES = frozenset({"Coverage", "ClaimResponse", "ExplanationOfBenefit"})
# Which reference ties a financial row to its insurer.
INSURER_REFERENCE = {
    "Coverage": "payor",
    "Claim": "insurer",
    "ClaimResponse": "insurer",
    "ExplanationOfBenefit": "insurer",
}


@dataclass(frozen=True)
class PatientSet:
    """A union of ways a patient can be within reach. Empty means nobody."""

    ids: frozenset[str] = frozenset()
    managed_by: str | None = None  # Organization id (Patient.managingOrganization)
    requested_by: str | None = None  # Practitioner id (ServiceRequest.requester)
    routed_to: str | None = None  # Organization id (ServiceRequest.performer / Task.owner)
    insured_by: str | None = None  # Organization id (Coverage.payor)


@dataclass(frozen=True)
class Scope:
    """Which rows of one type are visible. ``patients=None`` means no patient restriction."""

    patients: PatientSet | None = None
    include_unowned: bool = True  # rows that belong to no patient compartment
    reference: tuple[str, str] | None = None  # (search param, "Type/id") the row must carry

    @property
    def unrestricted(self) -> bool:
        return self.patients is None and self.include_unowned and self.reference is None


EVERYTHING = Scope()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    scope: Scope = field(default=EVERYTHING)
    reason: str = ""

    @classmethod
    def deny(cls, reason: str) -> Decision:
        return cls(False, EVERYTHING, reason)


class AccessPolicy:
    """Role-based rules of the consortium (DESIGN.md, 'Who uses it')."""

    def decide(self, who: Principal, resource_type: str, action: Action) -> Decision:
        if who.role != Role.SYSTEM:
            if resource_type == COMMUNICATION_TYPE:
                return self._communication(who, action)
            if resource_type == SUBSCRIPTION_TYPE:
                return self._subscription(who, action)
        rule = getattr(self, f"_{who.role.value}", None)
        if rule is None:
            return Decision.deny(f"role {who.role} has no access rules")
        decision: Decision = rule(who, resource_type, action)
        return decision

    # -- per role ---------------------------------------------------------------------------

    def _system(self, who: Principal, rtype: str, action: Action) -> Decision:
        return Decision(True)

    def _admin(self, who: Principal, rtype: str, action: Action) -> Decision:
        if rtype in DIRECTORY_TYPES:
            return Decision(True)
        if rtype == AUDIT_TYPE and action in READS:
            return Decision(True)
        return Decision.deny(
            "administrators manage users and organizations and read no clinical data"
        )

    def _resident(self, who: Principal, rtype: str, action: Action) -> Decision:
        if action in WRITES:
            return Decision.deny("residents read their record; changes go through their doctor")
        if rtype in DIRECTORY_TYPES:
            return Decision(True)
        own = PatientSet(ids=frozenset({who.patient_id} if who.patient_id else ()))
        return Decision(True, Scope(patients=own, include_unowned=False))

    def _township_doctor(self, who: Principal, rtype: str, action: Action) -> Decision:
        if rtype in DIRECTORY_TYPES:
            return self._directory_read_only(action)
        if rtype == AUDIT_TYPE:
            return Decision.deny("only administrators and the resident read audit events")
        if action in WRITES and rtype not in _DOCTOR_WRITES:
            return Decision.deny(f"township doctors do not write {rtype}")
        patients = PatientSet(managed_by=who.organization, requested_by=who.practitioner_id)
        return Decision(True, Scope(patients=patients))

    def _specialist(self, who: Principal, rtype: str, action: Action) -> Decision:
        if rtype in DIRECTORY_TYPES:
            return self._directory_read_only(action)
        if rtype == AUDIT_TYPE or rtype in FINANCIAL_TYPES:
            return Decision.deny(f"specialists do not read {rtype}")
        if action in WRITES and rtype not in _SPECIALIST_WRITES:
            return Decision.deny(f"specialists do not write {rtype}")
        return Decision(True, Scope(patients=PatientSet(routed_to=who.organization)))

    def _insurer(self, who: Principal, rtype: str, action: Action) -> Decision:
        if rtype in DIRECTORY_TYPES:
            return self._directory_read_only(action)
        if rtype == "Patient" and action in READS:
            return Decision(
                True,
                Scope(patients=PatientSet(insured_by=who.organization), include_unowned=False),
            )
        if rtype in FINANCIAL_TYPES:
            if action in WRITES and rtype not in _INSURER_WRITES:
                return Decision.deny(f"insurers do not write {rtype}")
            ref = (INSURER_REFERENCE[rtype], f"Organization/{who.organization}")
            return Decision(True, Scope(reference=ref))
        return Decision.deny(
            "insurers read only Coverage, Claim, ClaimResponse, ExplanationOfBenefit "
            "and the demographics of their insured"
        )

    def _device(self, who: Principal, rtype: str, action: Action) -> Decision:
        """A DICOM caller (C-FIND, C-GET, C-MOVE) acts for the Organization owning its Device:
        it reads the images of that organization's patients and of those routed to it."""
        if action in WRITES:
            return Decision.deny("DICOM devices query and retrieve; they store through ingest")
        if rtype in DIRECTORY_TYPES:
            return Decision(True)
        if rtype not in CLINICAL_TYPES:
            return Decision.deny(f"DICOM devices do not read {rtype}")
        if not who.organization:
            return Decision(True, Scope(patients=PatientSet(), include_unowned=False))
        patients = PatientSet(managed_by=who.organization, routed_to=who.organization)
        return Decision(True, Scope(patients=patients, include_unowned=False))

    def _peer(self, who: Principal, rtype: str, action: Action) -> Decision:
        """Another member's gateway (mutual TLS + token) delivering a request, a status or a
        report: it works on the patients its organization manages or that are routed to it."""
        if rtype in DIRECTORY_TYPES:
            return self._directory_read_only(action)
        if rtype not in CLINICAL_TYPES:
            return Decision.deny(f"consortium gateways do not exchange {rtype}")
        if not who.organization:
            return Decision(True, Scope(patients=PatientSet(), include_unowned=False))
        patients = PatientSet(managed_by=who.organization, routed_to=who.organization)
        return Decision(True, Scope(patients=patients, include_unowned=False))

    # -- notifications and subscriptions -----------------------------------------------------

    @staticmethod
    def _communication(who: Principal, action: Action) -> Decision:
        """A notification is read by its recipient only, within the patients the recipient
        reaches anyway; the recipient marks it read (an update the Communication guard limits
        to ``received``); only the gateway writes or deletes one."""
        if action in (Action.CREATE, Action.DELETE):
            return Decision.deny(
                "notifications are written by the gateway; their recipient marks them read"
            )
        if who.role == Role.RESIDENT:
            me = f"Patient/{who.patient_id}" if who.patient_id else None
            patients = PatientSet(ids=frozenset({who.patient_id} if who.patient_id else ()))
            unowned = False
        elif who.role == Role.TOWNSHIP_DOCTOR:
            me = f"Practitioner/{who.practitioner_id}" if who.practitioner_id else None
            patients = PatientSet(managed_by=who.organization, requested_by=who.practitioner_id)
            unowned = True
        elif who.role == Role.SPECIALIST:
            me = f"Practitioner/{who.practitioner_id}" if who.practitioner_id else None
            patients = PatientSet(routed_to=who.organization)
            unowned = True
        else:
            return Decision.deny(
                "notifications are read by the doctor, specialist or resident they are addressed to"
            )
        if me is None:  # an account that is no Practitioner or Patient receives nothing
            return Decision(True, Scope(patients=PatientSet(), include_unowned=False))
        return Decision(
            True, Scope(patients=patients, include_unowned=unowned, reference=("recipient", me))
        )

    @staticmethod
    def _subscription(who: Principal, action: Action) -> Decision:
        """Administrators manage every Subscription (the Subscription guard lets them only turn
        another user's off); a doctor or specialist who is a Practitioner has their own (its
        owner extension names them), whose criteria the guard keeps to their notifications."""
        if who.role == Role.ADMIN:
            return Decision(True)
        if who.role in (Role.TOWNSHIP_DOCTOR, Role.SPECIALIST):
            if not who.practitioner_id:
                return Decision.deny(
                    "only an account linked to a Practitioner subscribes to its notifications"
                )
            owner = ("owner", f"Practitioner/{who.practitioner_id}")
            return Decision(True, Scope(reference=owner))
        return Decision.deny(
            "Subscriptions are made by administrators, and by doctors and specialists for "
            "their own notifications"
        )

    @staticmethod
    def _directory_read_only(action: Action) -> Decision:
        if action in READS:
            return Decision(True)
        return Decision.deny("the consortium directory is managed by administrators")
