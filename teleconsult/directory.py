"""The consortium directory, as the record holds it: members (Organization, by their code),
where to reach them (Endpoint), which departments read remote requests (HealthcareService, with
duty hours) and how long their queues are (open Tasks they own).

Endpoints come in two kinds:

- FHIR messaging (``connectionType`` hl7-fhir-msg): ``address`` is the member gateway's FHIR
  base, messages go to ``{address}/$process-message`` over HTTPS with mutual TLS;
- DICOM (``connectionType`` ``urn:yilian:endpoint-type|dicom-dimse``): ``address`` is
  ``dicoms://AE_TITLE@host:port`` (DICOM over TLS).

Patient data leaves the gateway only over TLS: an ``http://`` or ``dicom://`` address is refused
when an operator writes it and held back by the delivery workers if it is in the record anyway.

Reads here are the gateway's own (no audit record: the directory holds no patient data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, func, select

from records import store
from records.fhirtypes import ORG_CODE_SYSTEM, organization_id
from records.schema import resource, search_reference, search_token
from security.signing import public_key_from_jwk
from teleconsult import lifecycle
from teleconsult.routing import Service, service_from_fhir

CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
ENDPOINT_TYPE = "urn:yilian:endpoint-type"
FHIR, DICOM = "fhir", "dicom"
# (system, code) of each kind of Endpoint we deliver to
KINDS = {FHIR: (CONNECTION_TYPE, "hl7-fhir-msg"), DICOM: (ENDPOINT_TYPE, "dicom-dimse")}
OPEN_FOR_QUEUE = sorted(lifecycle.OPEN - {lifecycle.DRAFT, lifecycle.REJECTED})


class DirectoryError(ValueError):
    """An Endpoint that cannot be used as it is written."""


@dataclass(frozen=True)
class Endpoint:
    id: str
    organization: str  # Organization id
    kind: str  # fhir | dicom
    address: str
    active: bool

    def dicom_parts(self) -> tuple[str, str, int]:
        """(called AE title, host, port) of a DICOM endpoint."""
        self.check()
        parts = urlsplit(self.address)
        return str(parts.username), str(parts.hostname), parts.port or 104

    def check(self) -> None:
        """Refuse an address that cannot be used, or would send patient data in the clear."""
        parts = urlsplit(self.address)
        if self.kind == DICOM:
            if parts.scheme != "dicoms" or not parts.username or not parts.hostname:
                raise DirectoryError(
                    f"Endpoint/{self.id}: a DICOM address is dicoms://AE_TITLE@host:port "
                    f"(DICOM over TLS), not '{self.address}'"
                )
        elif parts.scheme != "https" or not parts.hostname:
            raise DirectoryError(
                f"Endpoint/{self.id}: a member's FHIR base is an https:// URL, not '{self.address}'"
            )

    @classmethod
    def of(cls, rid: str, body: dict[str, Any]) -> Endpoint | None:
        coding = body.get("connectionType") or {}
        key = (coding.get("system"), coding.get("code"))
        kind = next((k for k, v in KINDS.items() if v == key), None)
        owner = (body.get("managingOrganization") or {}).get("reference", "")
        if kind is None or not owner.startswith("Organization/"):
            return None
        return cls(
            id=rid,
            organization=owner.removeprefix("Organization/"),
            kind=kind,
            address=str(body.get("address", "")),
            active=body.get("status") == "active",
        )


def endpoint_body(organization: str, kind: str, address: str, *, active: bool) -> dict[str, Any]:
    system, code = KINDS[kind]
    return {
        "resourceType": "Endpoint",
        "status": "active" if active else "off",
        "connectionType": {"system": system, "code": code},
        "managingOrganization": {"reference": f"Organization/{organization}"},
        "payloadType": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                        "code": "any",
                    }
                ]
            }
        ],
        "address": address,
    }


def endpoint_id(organization: str, kind: str) -> str:
    """The id an organization's Endpoint of one kind gets when written by this gateway."""
    return f"{organization}-{kind}"


def _live(conn: Connection, rtype: str) -> list[tuple[str, dict[str, Any]]]:
    rows = conn.execute(
        select(resource.c.res_id, resource.c.content).where(
            resource.c.res_type == rtype, resource.c.deleted.is_(False)
        )
    )
    return [(row.res_id, json.loads(row.content)) for row in rows]


def endpoints(conn: Connection, organization: str | None = None) -> list[Endpoint]:
    found = [Endpoint.of(rid, body) for rid, body in _live(conn, "Endpoint")]
    return sorted(
        (e for e in found if e and (organization is None or e.organization == organization)),
        key=lambda e: (e.organization, e.kind, e.id),
    )


def endpoint(conn: Connection, organization: str, kind: str) -> Endpoint | None:
    """The organization's active Endpoint of a kind (else an inactive one, else None)."""
    mine = [e for e in endpoints(conn, organization) if e.kind == kind]
    mine.sort(key=lambda e: not e.active)
    return mine[0] if mine else None


def endpoint_by_id(conn: Connection, rid: str) -> Endpoint | None:
    row = conn.execute(
        select(resource.c.content).where(
            resource.c.res_type == "Endpoint",
            resource.c.res_id == rid,
            resource.c.deleted.is_(False),
        )
    ).first()
    return Endpoint.of(rid, json.loads(row.content)) if row else None


def organization_code(conn: Connection, organization: str) -> str | None:
    row = conn.execute(
        select(search_token.c.code).where(
            search_token.c.res_type == "Organization",
            search_token.c.res_id == organization,
            search_token.c.param == "identifier",
            search_token.c.system == ORG_CODE_SYSTEM,
        )
    ).first()
    return row.code if row else None


def organization_of_code(conn: Connection, code: str) -> str | None:
    """The Organization id of a member code, if the directory has it."""
    rid = organization_id(code)
    row = conn.execute(
        select(resource.c.res_id).where(
            resource.c.res_type == "Organization",
            resource.c.res_id == rid,
            resource.c.deleted.is_(False),
        )
    ).first()
    return rid if row else None


REPORT_KEY = "urn:yilian:report-signing-key"  # Organization extension: a public JWK (JSON)


def trusted_keys(conn: Connection, organization: str) -> dict[str, Ed25519PublicKey]:
    """The report-signing keys an operator registered for a member (``yilian consortium
    trust``), by key id: the only keys its reports are checked against."""
    found = store.current(conn, "Organization", organization)
    if found is None or found.deleted:
        return {}
    keys = {}
    for ext in found.json().get("extension", []):
        if ext.get("url") == REPORT_KEY:
            jwk = json.loads(ext["valueString"])
            keys[jwk["kid"]] = public_key_from_jwk(jwk)
    return keys


def with_trusted_key(body: dict[str, Any], jwk: dict[str, Any]) -> dict[str, Any]:
    """The Organization with ``jwk`` among its report-signing keys (checked, once)."""
    public_key_from_jwk(jwk)
    if "kid" not in jwk:
        raise DirectoryError("the key has no kid")
    others = [
        e
        for e in body.get("extension", [])
        if e.get("url") != REPORT_KEY or json.loads(e["valueString"]).get("kid") != jwk["kid"]
    ]
    value = json.dumps(jwk, sort_keys=True, separators=(",", ":"))
    return {**body, "extension": [*others, {"url": REPORT_KEY, "valueString": value}]}


def services(conn: Connection) -> list[Service]:
    """Every department that reads remote requests (HealthcareService of a kind we route)."""
    out = []
    for rid, body in _live(conn, "HealthcareService"):
        owner = (body.get("providedBy") or {}).get("reference", "").removeprefix("Organization/")
        code = organization_code(conn, owner) if owner else None
        if code is None:
            continue
        service = service_from_fhir({**body, "id": rid}, code)
        if service.kinds:
            out.append(service)
    return sorted(out, key=lambda s: (s.organization_code, s.id))


def queue_length(conn: Connection, organization: str) -> int:
    """Open Tasks an organization owns: received, accepted, in progress or on hold."""
    owner, status = search_reference.alias("owner"), search_token.alias("status")
    counted = conn.execute(
        select(func.count(func.distinct(owner.c.res_id)))
        .select_from(owner)
        .join(status, (status.c.res_type == "Task") & (status.c.res_id == owner.c.res_id))
        .join(
            resource,
            (resource.c.res_type == "Task")
            & (resource.c.res_id == owner.c.res_id)
            & resource.c.deleted.is_(False),
        )
        .where(
            owner.c.res_type == "Task",
            owner.c.param == "owner",
            owner.c.target_type == "Organization",
            owner.c.target_id == organization,
            status.c.param == "status",
            status.c.code.in_(OPEN_FOR_QUEUE),
        )
    ).scalar_one()
    return int(counted)
