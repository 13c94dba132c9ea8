"""Search parameters of the supported resource types, and how their values are extracted.

Each parameter is a kind (token, string, date, reference) and the element paths it reads,
following the R4 SearchParameter definitions for the parameters we implement. ``patient``
is answered from the patient compartment (``resource.patient_id``) for every type that has one;
``_id`` and ``_lastUpdated`` are answered from the resource row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # token | string | date | reference
    paths: tuple[str, ...]


def _p(name: str, kind: str, *paths: str) -> Param:
    return Param(name, kind, paths)


_IDENT = _p("identifier", "token", "identifier")

PARAMS: dict[str, dict[str, Param]] = {}


def _register(rtype: str, *params: Param) -> None:
    PARAMS[rtype] = {p.name: p for p in params}


_register(
    "Patient",
    _IDENT,
    _p("name", "string", "name"),
    _p("family", "string", "name.family"),
    _p("given", "string", "name.given"),
    _p("birthdate", "date", "birthDate"),
    _p("gender", "token", "gender"),
    _p("phone", "token", "telecom"),
    _p("telecom", "token", "telecom"),
    _p("address", "string", "address"),
    _p("organization", "reference", "managingOrganization"),
    _p("general-practitioner", "reference", "generalPractitioner"),
    _p("link", "reference", "link.other"),
    _p("active", "token", "active"),
)
_register(
    "Practitioner",
    _IDENT,
    _p("name", "string", "name"),
    _p("family", "string", "name.family"),
    _p("given", "string", "name.given"),
    _p("gender", "token", "gender"),
    _p("active", "token", "active"),
)
_register(
    "PractitionerRole",
    _IDENT,
    _p("practitioner", "reference", "practitioner"),
    _p("organization", "reference", "organization"),
    _p("role", "token", "code"),
    _p("specialty", "token", "specialty"),
    _p("service", "reference", "healthcareService"),
    _p("endpoint", "reference", "endpoint"),
    _p("active", "token", "active"),
)
_register(
    "Organization",
    _IDENT,
    _p("name", "string", "name", "alias"),
    _p("type", "token", "type"),
    _p("partof", "reference", "partOf"),
    _p("endpoint", "reference", "endpoint"),
    _p("active", "token", "active"),
)
_register(
    "Location",
    _IDENT,
    _p("name", "string", "name", "alias"),
    _p("organization", "reference", "managingOrganization"),
    _p("status", "token", "status"),
)
_register(
    "Endpoint",
    _IDENT,
    _p("name", "string", "name"),
    _p("organization", "reference", "managingOrganization"),
    _p("status", "token", "status"),
    _p("connection-type", "token", "connectionType"),
)
_register(
    "Device",
    _IDENT,
    _p("organization", "reference", "owner"),
    _p("type", "token", "type"),
    _p("status", "token", "status"),
    _p("device-name", "string", "deviceName.name"),
    _p("url", "token", "url"),
)
_register(
    "HealthcareService",
    _IDENT,
    _p("name", "string", "name"),
    _p("organization", "reference", "providedBy"),
    _p("specialty", "token", "specialty"),
    _p("service-type", "token", "type"),
    _p("endpoint", "reference", "endpoint"),
    _p("active", "token", "active"),
)
_register(
    "Encounter",
    _IDENT,
    _p("subject", "reference", "subject"),
    _p("status", "token", "status"),
    _p("class", "token", "class"),
    _p("type", "token", "type"),
    _p("date", "date", "period"),
    _p("service-provider", "reference", "serviceProvider"),
    _p("participant", "reference", "participant.individual"),
    _p("based-on", "reference", "basedOn"),
)
_register(
    "Observation",
    _IDENT,
    _p("subject", "reference", "subject"),
    _p("code", "token", "code"),
    _p("date", "date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
    _p("status", "token", "status"),
    _p("category", "token", "category"),
    _p("encounter", "reference", "encounter"),
    _p("based-on", "reference", "basedOn"),
    _p("performer", "reference", "performer"),
    _p("derived-from", "reference", "derivedFrom"),
    _p("has-member", "reference", "hasMember"),
    _p("component-code", "token", "component.code"),
)
_register(
    "DiagnosticReport",
    _IDENT,
    _p("subject", "reference", "subject"),
    _p("code", "token", "code"),
    _p("date", "date", "effectiveDateTime", "effectivePeriod"),
    _p("issued", "date", "issued"),
    _p("status", "token", "status"),
    _p("category", "token", "category"),
    _p("encounter", "reference", "encounter"),
    _p("based-on", "reference", "basedOn"),
    _p("performer", "reference", "performer"),
    _p("result", "reference", "result"),
    _p("results-interpreter", "reference", "resultsInterpreter"),
)
_register(
    "ServiceRequest",
    _IDENT,
    _p("subject", "reference", "subject"),
    _p("code", "token", "code"),
    _p("status", "token", "status"),
    _p("category", "token", "category"),
    _p("intent", "token", "intent"),
    _p("priority", "token", "priority"),
    _p("requester", "reference", "requester"),
    _p("performer", "reference", "performer"),
    _p("encounter", "reference", "encounter"),
    _p("authored", "date", "authoredOn"),
    _p("date", "date", "authoredOn"),
    _p("occurrence", "date", "occurrenceDateTime", "occurrencePeriod"),
    _p("supporting-info", "reference", "supportingInfo"),
)
_register(
    "Task",
    _IDENT,
    _p("subject", "reference", "for"),
    _p("focus", "reference", "focus"),
    _p("based-on", "reference", "basedOn"),
    _p("owner", "reference", "owner"),
    _p("requester", "reference", "requester"),
    _p("status", "token", "status"),
    _p("business-status", "token", "businessStatus"),
    _p("priority", "token", "priority"),
    _p("intent", "token", "intent"),
    _p("code", "token", "code"),
    _p("authored-on", "date", "authoredOn"),
    _p("date", "date", "authoredOn"),
    _p("modified", "date", "lastModified"),
    _p("period", "date", "executionPeriod"),
)
_register(
    "ImagingStudy",
    _IDENT,
    _p("subject", "reference", "subject"),
    _p("started", "date", "started"),
    _p("date", "date", "started"),
    _p("status", "token", "status"),
    _p("modality", "token", "series.modality"),
    _p("endpoint", "reference", "endpoint", "series.endpoint"),
    _p("basedon", "reference", "basedOn"),
    _p("encounter", "reference", "encounter"),
    _p("referrer", "reference", "referrer"),
    _p("interpreter", "reference", "interpreter"),
)
_register(
    "DocumentReference",
    _IDENT,
    _p("subject", "reference", "subject"),
    _p("date", "date", "date"),
    _p("status", "token", "status"),
    _p("category", "token", "category"),
    _p("type", "token", "type"),
    _p("author", "reference", "author"),
    _p("custodian", "reference", "custodian"),
    _p("encounter", "reference", "context.encounter"),
    _p("related", "reference", "context.related"),
)
_register(
    "Appointment",
    _IDENT,
    _p("actor", "reference", "participant.actor"),
    _p("date", "date", "start"),
    _p("status", "token", "status"),
    _p("service-type", "token", "serviceType"),
    _p("specialty", "token", "specialty"),
    _p("based-on", "reference", "basedOn"),
)
_register(
    "Coverage",
    _IDENT,
    _p("beneficiary", "reference", "beneficiary"),
    _p("payor", "reference", "payor"),
    _p("subscriber", "reference", "subscriber"),
    _p("policy-holder", "reference", "policyHolder"),
    _p("status", "token", "status"),
    _p("type", "token", "type"),
)
_register(
    "Claim",
    _IDENT,
    _p("insurer", "reference", "insurer"),
    _p("provider", "reference", "provider"),
    _p("status", "token", "status"),
    _p("use", "token", "use"),
    _p("created", "date", "created"),
    _p("date", "date", "created"),
    _p("encounter", "reference", "item.encounter"),
)
_register(
    "ClaimResponse",
    _IDENT,
    _p("insurer", "reference", "insurer"),
    _p("request", "reference", "request"),
    _p("requestor", "reference", "requestor"),
    _p("status", "token", "status"),
    _p("outcome", "token", "outcome"),
    _p("created", "date", "created"),
    _p("date", "date", "created"),
)
_register(
    "ExplanationOfBenefit",
    _IDENT,
    _p("insurer", "reference", "insurer"),
    _p("claim", "reference", "claim"),
    _p("provider", "reference", "provider"),
    _p("status", "token", "status"),
    _p("created", "date", "created"),
    _p("date", "date", "created"),
)
_register(
    "Consent",
    _IDENT,
    _p("status", "token", "status"),
    _p("category", "token", "category"),
    _p("scope", "token", "scope"),
    _p("date", "date", "dateTime"),
    _p("organization", "reference", "organization"),
    _p("actor", "reference", "provision.actor.reference"),
)
_register(
    "Provenance",
    _p("target", "reference", "target"),
    _p("agent", "reference", "agent.who"),
    _p("entity", "reference", "entity.what"),
    _p("recorded", "date", "recorded"),
    _p("date", "date", "recorded"),
)
_register("Binary")
_register(
    "Communication",
    _IDENT,
    _p("subject", "reference", "subject"),
    _p("recipient", "reference", "recipient"),
    _p("sender", "reference", "sender"),
    _p("category", "token", "category"),
    _p("status", "token", "status"),
    _p("sent", "date", "sent"),
    _p("received", "date", "received"),
    _p("part-of", "reference", "partOf"),
    _p("based-on", "reference", "basedOn"),
    _p("encounter", "reference", "encounter"),
    _p("medium", "token", "medium"),
    _p("about", "reference", "about"),  # not an R4 parameter: the Task a notification is about
)
_register(
    "Subscription",
    _p("status", "token", "status"),
    _p("type", "token", "channel.type"),
    _p("url", "token", "channel.endpoint"),
    _p("payload", "token", "channel.payload"),
    _p("criteria", "string", "criteria"),
    _p("contact", "token", "contact"),
    # not an R4 parameter: the Practitioner whose Subscription it is (its owner extension,
    # written by the gateway; teleconsult.subscription), which the access rules read
    _p("owner", "reference", "extension.valueReference"),
)
# AuditEvent is generated from the audit chain, not indexed: these name what its search accepts.
_register(
    "AuditEvent",
    _p("date", "date", "recorded"),
    _p("agent", "token", "agent.who.identifier"),
    _p("action", "token", "subtype"),
    _p("outcome", "token", "outcome"),
)

# Where a resource points at the patient whose compartment it belongs to (FHIR R4
# CompartmentDefinition "patient", first matching element wins).
COMPARTMENT_PATHS: dict[str, tuple[str, ...]] = {
    "Encounter": ("subject",),
    "Observation": ("subject", "performer"),
    "DiagnosticReport": ("subject",),
    "ServiceRequest": ("subject", "performer"),
    "Task": ("for", "focus"),
    "ImagingStudy": ("subject",),
    "DocumentReference": ("subject", "author"),
    "Appointment": ("participant.actor",),
    "Coverage": ("beneficiary", "subscriber", "policyHolder", "payor"),
    "Claim": ("patient", "payee.party"),
    "ClaimResponse": ("patient",),
    "ExplanationOfBenefit": ("patient", "payee.party"),
    "Consent": ("patient",),
    "Provenance": ("target",),
    "Binary": ("securityContext",),
    "Communication": ("subject", "sender", "recipient"),
}


@cache
def indexed(rtype: str) -> tuple[tuple[Param, tuple[str, ...], tuple[tuple[str, ...], ...]], ...]:
    """The parameters of a type, each with the elements its paths start at (a resource that
    has none of them has no value for it: ``records.store.index_rows`` skips it unread) and
    its paths split into steps (for ``values_at``)."""
    return tuple(
        (
            param,
            tuple(dict.fromkeys(path.split(".")[0] for path in param.paths)),
            tuple(_steps(path) for path in param.paths),
        )
        for param in PARAMS.get(rtype, {}).values()
    )


def values_at(resource: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> list[Any]:
    """What ``values`` yields, by a parameter's paths split into steps (``indexed``). The
    list may be the resource's own: read it, do not change it."""
    if len(paths) == 1:
        steps = paths[0]
        if len(steps) == 1:  # an element of the resource itself: most parameters
            if steps[0] not in resource:
                return []
            value = resource[steps[0]]
            return value if isinstance(value, list) else [value]
        return _at(resource, steps)
    return [value for steps in paths if steps[0] in resource for value in _at(resource, steps)]


def walk(node: Any, path: str) -> Iterator[Any]:
    """Yield the values at a dotted path, flattening lists at every step."""
    return iter(_at(node, _steps(path)))


@cache
def _steps(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _at(node: Any, steps: tuple[str, ...]) -> list[Any]:
    items = [node]
    for part in steps:
        nxt: list[Any] = []
        for item in items:
            if isinstance(item, dict) and part in item:
                value = item[part]
                if isinstance(value, list):
                    nxt.extend(value)
                else:
                    nxt.append(value)
        if not nxt:
            return nxt
        items = nxt
    return items


def values(resource: dict[str, Any], param: Param) -> Iterator[Any]:
    if len(param.paths) == 1:
        return walk(resource, param.paths[0])
    return iter([value for path in param.paths for value in _at(resource, _steps(path))])


@lru_cache(maxsize=4096)  # a message's resources name the same patient, visit, report
def parse_reference(ref: str) -> tuple[str | None, str] | None:
    """'Patient/1', 'http://x/fhir/Patient/1', 'Patient/1/_history/2' -> ('Patient', '1')."""
    if not ref or ref.startswith("#"):
        return None
    if ref.startswith("urn:"):
        return (None, ref)
    parts = ref.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return (parts[-2], parts[-1])
    if len(parts) == 1:
        return (None, parts[0])
    return None


def references(resource: dict[str, Any], param: Param) -> Iterator[tuple[str | None, str]]:
    yield from reference_pairs(values(resource, param))


def reference_pairs(found: Iterable[Any]) -> list[tuple[str | None, str]]:
    """(type, id) of each value that is a Reference with a parsable reference."""
    out = []
    for value in found:
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            parsed = parse_reference(value["reference"])
            if parsed:
                out.append(parsed)
    return out


def tokens(resource: dict[str, Any], param: Param) -> Iterator[tuple[str | None, str]]:
    yield from token_pairs(values(resource, param))


def _token_values(value: Any) -> Iterator[tuple[str | None, str]]:
    yield from token_pairs((value,))


def token_pairs(found: Iterable[Any]) -> list[tuple[str | None, str]]:
    """(system, code) of each value: a code, a Coding, a CodeableConcept, an Identifier."""
    out: list[tuple[str | None, str]] = []
    for value in found:
        if isinstance(value, bool):
            out.append((None, "true" if value else "false"))
        elif isinstance(value, str):
            out.append((None, value))
        elif isinstance(value, dict):
            if "coding" in value or ("text" in value and "value" not in value):  # CodeableConcept
                for coding in value.get("coding", []):
                    if coding.get("code"):
                        out.append((coding.get("system"), coding["code"]))
            elif "value" in value:  # Identifier, ContactPoint
                if value["value"] is not None:
                    out.append((value.get("system"), str(value["value"])))
            elif "code" in value:  # Coding
                out.append((value.get("system"), value["code"]))
    return out


def strings(resource: dict[str, Any], param: Param) -> Iterator[str]:
    yield from string_values(values(resource, param))


def string_values(found: Iterable[Any]) -> list[str]:
    """The texts of each value: a string, or a HumanName's or Address's parts."""
    out: list[str] = []
    for value in found:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            out.extend(_name_or_address_strings(value))
    return out


def _name_or_address_strings(value: dict[str, Any]) -> Iterator[str]:
    given = [g for g in value.get("given", []) if isinstance(g, str)]
    family = value.get("family")
    for key in ("text", "family", "city", "district", "state", "postalCode", "country"):
        if isinstance(value.get(key), str):
            yield value[key]
    for key in ("given", "prefix", "suffix", "line"):
        for part in value.get(key, []):
            if isinstance(part, str):
                yield part
    if isinstance(family, str) and given:
        yield family + "".join(given)  # 王秀英: Chinese order, no space
        yield " ".join([*given, family])  # Xiuying Wang


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())
