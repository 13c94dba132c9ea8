"""Resident identity (the master patient index rules).

- The 18-character resident identity number (公民身份号码, GB 11643-1999): six-digit address
  code, eight-digit birth date, three-digit sequence (odd for men, even for women) and an ISO 7064
  MOD 11-2 check character. It is validated on entry, and must agree with Patient.birthDate and
  Patient.gender.
- Other identifiers keep their systems: the medical insurance number, clinic record numbers with
  their assigning organization.
- Matching: an exact identifier match is certain; otherwise name, birth date, sex and phone give a
  weighted score.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import date
from typing import Any

from records.errors import Unprocessable

# The identifier root WS/T 500 (Chinese EMR sharing documents) uses for the identity card number.
RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
# Medical insurance number: a project-local system until the province's own URI is configured.
MEDICAL_INSURANCE_SYSTEM = "urn:yilian:sid:medical-insurance"

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


@dataclass(frozen=True)
class ResidentId:
    number: str
    birth_date: date
    gender: str  # "male" | "female"


def check_character(first17: str) -> str:
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def parse_resident_id(number: str) -> ResidentId:
    """Validate a resident identity number; ValueError says what is wrong (zh and en)."""
    text = number.strip().upper()
    if len(text) != 18:
        raise ValueError(f"must have 18 characters, has {len(text)} (身份证号应为18位)")
    if not text.isascii() or not text[:17].isdigit() or not (text[17].isdigit() or text[17] == "X"):
        raise ValueError(
            "must be 17 ASCII digits followed by a digit or X, no full-width characters "
            "(身份证号格式错误)"
        )
    try:
        born = date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        raise ValueError(
            f"birth date part {text[6:14]} is not a real date (出生日期无效)"
        ) from None
    if born > date.today() or born.year < 1880:
        raise ValueError(f"birth date part {text[6:14]} is out of range (出生日期超出范围)")
    expected = check_character(text[:17])
    if text[17] != expected:
        raise ValueError(
            f"check character is {text[17]} but the first 17 digits give {expected} (校验位错误)"
        )
    gender = "male" if int(text[16]) % 2 == 1 else "female"
    return ResidentId(text, born, gender)


def validate_patient(body: dict[str, Any]) -> None:
    """Refuse a Patient whose resident identity number is invalid or disagrees with it."""
    for index, ident in enumerate(body.get("identifier") or []):
        if not isinstance(ident, dict) or ident.get("system") != RESIDENT_ID_SYSTEM:
            continue
        where = f"Patient.identifier[{index}].value"
        value = ident.get("value")
        if not isinstance(value, str):
            raise Unprocessable(f"{where}: resident identity number is missing", expression=[where])
        try:
            rid = parse_resident_id(value)
        except ValueError as exc:
            raise Unprocessable(
                f"{where}: invalid resident identity number: {exc}", expression=[where]
            ) from None
        if value != value.strip():
            raise Unprocessable(
                f"{where}: remove the spaces around the resident identity number (身份证号含空格)",
                expression=[where],
            )
        if value != rid.number:
            raise Unprocessable(
                f"{where}: write the check character as upper-case X (校验位X应大写)",
                expression=[where],
            )
        birth = body.get("birthDate")
        if birth and birth != rid.birth_date.isoformat():
            raise Unprocessable(
                f"Patient.birthDate {birth} disagrees with the resident identity number, which "
                f"gives {rid.birth_date.isoformat()} (出生日期与身份证号不符)",
                expression=["Patient.birthDate", where],
            )
        gender = body.get("gender")
        if gender in ("male", "female") and gender != rid.gender:
            raise Unprocessable(
                f"Patient.gender {gender} disagrees with the resident identity number, which "
                f"gives {rid.gender} (性别与身份证号不符)",
                expression=["Patient.gender", where],
            )


def resident_id_of(body: dict[str, Any]) -> str | None:
    for ident in body.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == RESIDENT_ID_SYSTEM:
            value = ident.get("value")
            return value if isinstance(value, str) else None
    return None


# -- matching ----------------------------------------------------------------------------------

WEIGHTS = {"name": 0.4, "birthDate": 0.3, "gender": 0.1, "phone": 0.2}


def full_names(body: dict[str, Any]) -> set[str]:
    names = set()
    for name in body.get("name") or []:
        if not isinstance(name, dict):
            continue
        if isinstance(name.get("text"), str):
            names.add(_squash(name["text"]))
        family = name.get("family") or ""
        given = "".join(g for g in name.get("given") or [] if isinstance(g, str))
        if family or given:
            names.add(_squash(family + given))
    return names


def phones(body: dict[str, Any]) -> set[str]:
    out = set()
    for cp in body.get("telecom") or []:
        if isinstance(cp, dict) and cp.get("system") in (None, "phone", "sms"):
            digits = "".join(ch for ch in str(cp.get("value", "")) if ch.isdigit())
            if digits:
                out.add(digits[-11:])
    return out


def _squash(text: str) -> str:
    return "".join(text.casefold().split())


def score(candidate: dict[str, Any], probe: dict[str, Any]) -> float:
    """Similarity in [0, 1] of two Patients without a shared identifier."""
    total = 0.0
    a_names, b_names = full_names(candidate), full_names(probe)
    if a_names and b_names:
        best = max(difflib.SequenceMatcher(None, a, b).ratio() for a in a_names for b in b_names)
        total += WEIGHTS["name"] * best
    if candidate.get("birthDate") and candidate.get("birthDate") == probe.get("birthDate"):
        total += WEIGHTS["birthDate"]
    if candidate.get("gender") and candidate.get("gender") == probe.get("gender"):
        total += WEIGHTS["gender"]
    if phones(candidate) & phones(probe):
        total += WEIGHTS["phone"]
    return round(total, 3)


def grade(value: float, identifier_match: bool) -> str:
    """The match-grade extension code of FHIR Patient/$match."""
    if identifier_match:
        return "certain"
    if value >= 0.9:
        return "probable"
    if value >= 0.6:
        return "possible"
    return "certainly-not"


def lock_key(number: str) -> str:
    """What writers deciding whether a resident identity number is free take turns on
    (``records.db.lock_keys``)."""
    return f"resident-id:{number}"
