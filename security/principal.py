"""Who is asking: the small shared type every package passes to the records boundary."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    TOWNSHIP_DOCTOR = "township_doctor"
    SPECIALIST = "specialist"
    RESIDENT = "resident"
    INSURER = "insurer"
    ADMIN = "admin"
    SYSTEM = "system"  # the gateway itself: ingest, workers, demo loader
    DEVICE = "device"  # a registered DICOM device or workstation querying and retrieving
    PEER = "peer"  # another consortium member's gateway delivering requests, statuses, reports


@dataclass(frozen=True)
class Principal:
    username: str
    role: Role
    organization: str | None = None  # Organization id
    patient_id: str | None = None  # for a resident: their own Patient id
    practitioner_id: str | None = None  # for doctors and specialists
    source: str | None = None  # network address of the caller, for the audit record

    def with_source(self, source: str | None) -> Principal:
        return Principal(
            self.username,
            self.role,
            self.organization,
            self.patient_id,
            self.practitioner_id,
            source,
        )


SYSTEM = Principal(username="yilian", role=Role.SYSTEM)
