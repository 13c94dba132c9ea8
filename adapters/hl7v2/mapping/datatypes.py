"""HL7 v2 data types to FHIR data types, after the v2-to-FHIR IG datatype maps
(CX[Identifier], XPN[HumanName], XAD[Address], XTN[ContactPoint], CWE[CodeableConcept],
DTM[dateTime], XCN[Reference])."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from adapters.hl7v2.errors import DATA_TYPE_ERROR, Hl7Error, Location
from adapters.hl7v2.message import Segment
from records.identity import MEDICAL_INSURANCE_SYSTEM, RESIDENT_ID_SYSTEM

V2_TABLE = "http://terminology.hl7.org/CodeSystem/v2-"
CODE_SYSTEMS = {
    "LN": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "UCUM": "http://unitsofmeasure.org",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cn",
    "MDC": "urn:iso:std:iso:11073:10101",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
}

_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")


def urn_part(text: str) -> str:
    """A name from a message made fit for a URN ('Priority Health' -> 'Priority%20Health')."""
    return quote(text.strip(), safe="._-:%")


def code_system(name: str) -> str | None:
    name = name.strip()
    if not name:
        return None
    if name.upper() in CODE_SYSTEMS:
        return CODE_SYSTEMS[name.upper()]
    if re.fullmatch(r"HL7\d{4}", name.upper()):
        return V2_TABLE + name[3:]
    if name.startswith(("http://", "https://", "urn:")):
        return name
    return f"urn:yilian:cs:{urn_part(name)}"


def dtm(value: str, where: Location, default_tz: str = "+08:00") -> str | None:
    """HL7 DTM/TS -> FHIR date or dateTime (precision kept; local times get ``default_tz``)."""
    value = value.strip()
    if not value or value == '""':
        return None
    match = _DTM.match(value)
    if not match:
        raise Hl7Error(
            f"'{value}' is not an HL7 date/time (YYYYMMDDHHMMSS[+ZZZZ])", where, DATA_TYPE_ERROR
        )
    year, month, day, hour, minute, second, fraction, tz = match.groups()
    if fraction and second is None:
        raise Hl7Error(
            f"'{value}' has a fraction of a second but no seconds", where, DATA_TYPE_ERROR
        )
    if tz and not _offset_ok(tz):
        raise Hl7Error(
            f"'{value}' has an impossible time-zone offset '{tz}' (at most +/-1400)",
            where,
            DATA_TYPE_ERROR,
        )
    try:
        _check(int(year), month, day, hour, minute, second)
    except ValueError as exc:
        raise Hl7Error(
            f"'{value}' is not a real date/time: {exc}", where, DATA_TYPE_ERROR
        ) from None
    if month is None:
        return year
    if day is None:
        return f"{year}-{month}"
    if hour is None:
        return f"{year}-{month}-{day}"
    zone = f"{tz[:3]}:{tz[3:]}" if tz else default_tz
    zone = "Z" if zone in ("+00:00", "-00:00") and tz else zone
    text = f"{year}-{month}-{day}T{hour}:{minute or '00'}:{second or '00'}"
    if fraction:
        text += fraction
    return text + zone


def _offset_ok(tz: str) -> bool:
    """+/-HHMM with hours 00-14 and minutes 00-59, and no more than 14:00 (FHIR's limit)."""
    hours, minutes = int(tz[1:3]), int(tz[3:5])
    return hours <= 14 and minutes <= 59 and (hours, minutes) <= (14, 0)


def _check(
    year: int,
    month: str | None,
    day: str | None,
    hour: str | None,
    minute: str | None,
    second: str | None,
) -> None:
    from datetime import datetime

    datetime(
        year, int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0)
    )


def date_only(value: str, where: Location) -> str | None:
    converted = dtm(value, where)
    return converted[:10] if converted else None


def _cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for ch in text)


def xpn(comps: list[str]) -> dict[str, Any] | None:
    family, given, middle, suffix, prefix = (comps + [""] * 5)[:5]
    use_code = comps[6] if len(comps) > 6 else ""
    if not (family or given):
        return None
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    givens = [g for g in (given, middle) if g]
    if givens:
        name["given"] = givens
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    if _cjk(family + given):
        name["text"] = family + "".join(givens)  # 王秀英: family first, no space
    use = {"L": "official", "D": "usual", "A": "nickname", "M": "maiden", "N": "nickname"}.get(
        use_code
    )
    if use:
        name["use"] = use
    return name


def xad(comps: list[str]) -> dict[str, Any] | None:
    street, other, city, state, zip_code, country, kind = (comps + [""] * 7)[:7]
    county = comps[8] if len(comps) > 8 else ""
    if not any((street, other, city, state, zip_code, country, county)):
        return None
    address: dict[str, Any] = {}
    lines = [x for x in (street, other) if x]
    if lines:
        address["line"] = lines
    for key, value in (
        ("city", city),
        ("district", county),
        ("state", state),
        ("postalCode", zip_code),
        ("country", country),
    ):
        if value:
            address[key] = value
    if _cjk("".join(lines) + city + state + county):
        address["text"] = state + city + county + "".join(lines)  # 省市县 + 街道, largest first
    use = {"H": "home", "B": "work", "O": "work", "C": "temp"}.get(kind)
    if use:
        address["use"] = use
    return address


def xtn(comps: list[str]) -> dict[str, Any] | None:
    comps = comps + [""] * 12
    use_code, equipment = comps[1], comps[2]
    email = comps[3]
    number = comps[0] or comps[11] or "".join(x for x in (comps[5], comps[6]) if x)
    if equipment in ("Internet", "X.400") or (email and not number):
        return {"system": "email", "value": email or number}
    if not number:
        return None
    point: dict[str, Any] = {"system": "fax" if equipment == "FX" else "phone", "value": number}
    use = {"PRN": "home", "WPN": "work", "ORN": "home", "NET": "home", "EMR": "home"}.get(use_code)
    if equipment == "CP":
        use = "mobile"
    if use:
        point["use"] = use
    return point


def cwe(comps: list[str]) -> dict[str, Any] | None:
    comps = comps + [""] * 6
    codings = []
    for code, display, system in ((comps[0], comps[1], comps[2]), (comps[3], comps[4], comps[5])):
        if code:
            coding: dict[str, Any] = {"code": code}
            sys_uri = code_system(system)
            if sys_uri:
                coding["system"] = sys_uri
            if display:
                coding["display"] = display
            codings.append(coding)
    text = comps[1] or comps[4]
    if not codings and not text:
        return None
    concept: dict[str, Any] = {}
    if codings:
        concept["coding"] = codings
    if text:
        concept["text"] = text
    return concept


RESIDENT_ID_OID = RESIDENT_ID_SYSTEM.removeprefix("urn:oid:")  # 2.16.156.10011.1.3
# HL7 table 0203 identifier types: NNCHN is China's national (resident identity) number;
# MC (patient's Medicare number) and SN (subscriber number) are the insurance numbers.
RESIDENT_ID_TYPES = {"NNCHN"}
INSURANCE_TYPES = {"MC", "SN"}


def _oid(text: str) -> str:
    text = text.strip()
    return text[8:] if text[:8].lower() == "urn:oid:" else text


def is_resident_id(comps: list[str]) -> bool:
    """CX of the resident identity number: type NNCHN, or assigned by the authority whose
    universal ID (CX-4.2) or namespace (CX-4.1) is exactly the resident identity OID."""
    authority = comps[3] if len(comps) > 3 else ""
    kind = comps[4] if len(comps) > 4 else ""
    if kind.strip().upper() in RESIDENT_ID_TYPES:
        return True
    hd = authority.split("&")
    namespace, universal = hd[0], (hd[1] if len(hd) > 1 else "")
    return RESIDENT_ID_OID in (_oid(namespace), _oid(universal))


def cx(comps: list[str], default_assigner: str) -> dict[str, Any] | None:
    """CX -> Identifier. The resident identity number and the medical insurance number get
    the national systems; a clinic's own numbers get ``urn:yilian:mrn:<assigning authority>``."""
    comps = comps + [""] * 6
    value, authority, kind = comps[0], comps[3], comps[4]
    if not value:
        return None
    namespace = authority.split("&")[0]
    ident: dict[str, Any] = {"value": value}
    if is_resident_id(comps):
        ident["system"] = RESIDENT_ID_SYSTEM
        ident["use"] = "official"
    elif kind.strip().upper() in INSURANCE_TYPES or namespace.upper() in ("YB", "医保"):
        ident["system"] = MEDICAL_INSURANCE_SYSTEM
    else:
        ident["system"] = f"urn:yilian:mrn:{urn_part(namespace or default_assigner)}"
    if kind:
        ident["type"] = {"coding": [{"system": V2_TABLE + "0203", "code": kind}]}
    return ident


def xcn(comps: list[str]) -> dict[str, Any] | None:
    """XCN (a person) -> a logical Reference with the identifier and the name as display."""
    comps = comps + [""] * 9
    ident, family, given = comps[0], comps[1], comps[2]
    if not (ident or family or given):
        return None
    ref: dict[str, Any] = {}
    if ident:
        ref["identifier"] = {"value": ident}
        if comps[8]:
            ref["identifier"]["system"] = f"urn:yilian:staff:{urn_part(comps[8].split('&')[0])}"
    name = (family + given) if _cjk(family + given) else " ".join(x for x in (given, family) if x)
    if name:
        ref["display"] = name
    return ref


def first(values: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    return next((v for v in values if v), None)


def every(segment: Segment, n: int, convert) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Convert each repetition of a field, joining subcomponents of a component with '&'."""
    sub = segment.seps[4]
    out = []
    for rep in segment.reps(n):
        if not any(any(c) for c in rep):
            continue  # an empty repetition (A~~C) converts to nothing
        value = convert([sub.join(c) for c in rep])
        if value:
            out.append(value)
    return out


def text(segment: Segment, n: int) -> str:
    """A text field (ST/TX/FT) as written: repetitions on separate lines (an empty repetition
    is an empty line), escapes decoded. A '^' or '&' the sender did not escape is kept as the
    character it is."""
    seps = segment.seps
    return "\n".join(seps[1].join(seps[4].join(sub) for sub in rep) for rep in segment.reps(n))
