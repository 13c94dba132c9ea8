"""PID (and PD1) -> Patient, after the v2-to-FHIR IG 'PID[Patient]' segment map."""

from __future__ import annotations

from typing import Any

from adapters.hl7v2.errors import REQUIRED_FIELD_MISSING, Hl7Error
from adapters.hl7v2.mapping import datatypes as dt
from adapters.hl7v2.mapping.translation import Context, Entry, Translation, new_key
from adapters.hl7v2.message import Segment
from records import identity

SEX = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "unknown"}


def patient_entry(pid: Segment, ctx: Context, translation: Translation) -> str:
    identifiers = dt.every(pid, 3, lambda c: dt.cx(c, ctx.sender_facility))
    identifiers += dt.every(pid, 2, lambda c: dt.cx(c, ctx.sender_facility))  # v2.3 external id
    identifiers += dt.every(pid, 4, lambda c: dt.cx(c, ctx.sender_facility))  # alternate id
    if not identifiers:
        raise Hl7Error(
            "PID-3 needs at least one patient identifier", pid.where(3), REQUIRED_FIELD_MISSING
        )
    body: dict[str, Any] = {"resourceType": "Patient", "identifier": identifiers}
    names = dt.every(pid, 5, dt.xpn)
    if names:
        body["name"] = names
    birth = dt.date_only(pid.value(7), pid.where(7))
    if birth:
        body["birthDate"] = birth
    sex = pid.value(8)
    if sex:
        if sex.upper() in SEX:
            body["gender"] = SEX[sex.upper()]
        else:  # keep the patient flowing; say what was left out
            translation.warnings.append(
                f"{pid.where(8)}: administrative sex '{sex}' is not in HL7 table 0001 "
                "(M F O U A N); gender left out"
            )
    addresses = dt.every(pid, 11, dt.xad)
    if addresses:
        body["address"] = addresses
    telecom = dt.every(pid, 13, dt.xtn) + [{**t, "use": "work"} for t in dt.every(pid, 14, dt.xtn)]
    if telecom:
        body["telecom"] = telecom
    marital = dt.cwe(pid.components(16))
    if marital:
        body["maritalStatus"] = marital
    death = pid.value(29)
    if death:
        body["deceasedDateTime"] = dt.dtm(death, pid.where(29), ctx.default_tz)
    elif pid.value(30).upper() == "Y":
        body["deceasedBoolean"] = True
    if ctx.organization:
        body["managingOrganization"] = {"reference": f"Organization/{ctx.organization}"}
    try:
        identity.validate_patient(body)
    except Exception as exc:  # FHIR-side wording; say it in v2 terms, naming PID-3
        diagnostics = getattr(exc, "diagnostics", str(exc))
        raise Hl7Error(
            diagnostics.replace("Patient.identifier", "PID-3 identifier"), pid.where(3), "102"
        ) from None
    match = [(i["system"], i["value"]) for i in identifiers]
    # the resident identity number is the strongest key: look it up first
    match.sort(key=lambda m: m[0] != identity.RESIDENT_ID_SYSTEM)
    key = translation.add(Entry(new_key(), "Patient", body, match=match, keep_identifiers=True))
    translation.patient_key = key
    return key
