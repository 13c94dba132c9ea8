"""Resident identity numbers (GB 11643-1999) and patient matching in records.identity."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from records.errors import Unprocessable
from records.identity import (
    RESIDENT_ID_SYSTEM,
    ResidentId,
    check_character,
    grade,
    parse_resident_id,
    resident_id_of,
    score,
    validate_patient,
)

# The sample number printed in GB 11643-1999 and countless descriptions of it:
# Beijing Chaoyang (110105), born 1949-12-31, sequence 002 (even: a woman), check X.
SAMPLE = "11010519491231002X"


def iso7064_mod11_2(first17: str) -> str:
    """The check character computed from the ISO 7064 definition, independently of the module:
    weight of position i (1-based from the left, 18 positions) is 2**(18 - i) mod 11, and the
    check value c satisfies sum + c == 1 (mod 11), with 10 written as X."""
    total = sum(int(d) * (2 ** (17 - i) % 11) for i, d in enumerate(first17))
    value = (12 - total % 11) % 11
    return "X" if value == 10 else str(value)


def number(area: str, born: date, seq: str) -> str:
    first17 = f"{area}{born:%Y%m%d}{seq}"
    return first17 + iso7064_mod11_2(first17)


def patient(value: Any, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": value}],
        **extra,
    }


# -- the number --------------------------------------------------------------------------------


def test_sample_check_character_by_hand() -> None:
    # 1*7+1*9+0*10+1*5+0*8+5*4+1*2+9*1+4*6+9*3+1*7+2*9+3*10+1*5+0*8+0*4+2*2 = 167,
    # 167 mod 11 = 2, and remainder 2 maps to X.
    assert iso7064_mod11_2(SAMPLE[:17]) == "X"
    assert check_character(SAMPLE[:17]) == "X"


def test_sample_parses() -> None:
    assert parse_resident_id(SAMPLE) == ResidentId(SAMPLE, date(1949, 12, 31), "female")


def test_male_number_parses() -> None:
    value = number("411325", date(1958, 4, 3), "061")
    rid = parse_resident_id(value)
    assert rid.gender == "male"
    assert rid.birth_date == date(1958, 4, 3)


def test_surrounding_space_and_lower_case_x_are_normalised_by_the_parser() -> None:
    assert parse_resident_id(f" {SAMPLE.lower()}\n").number == SAMPLE


@pytest.mark.parametrize("value", [SAMPLE[:17], SAMPLE + "1", "", "1" * 15])
def test_wrong_length_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="18 characters"):
        parse_resident_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "1101051949123100AX",  # letter among the first 17
        "11010519491231002Y",  # check character neither digit nor X
        "110105-949123100 2",
        "1101051949.231002X",
    ],
)
def test_non_digits_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="格式错误"):
        parse_resident_id(value)


def test_full_width_digits_are_refused() -> None:
    # 17 full-width digits (a Chinese IME in full-width mode) with an ASCII check character:
    # str.isdigit() alone accepts them, and the number would then escape the uniqueness check.
    full_width = "".join(chr(ord(d) + 0xFEE0) for d in SAMPLE[:17]) + "X"
    with pytest.raises(ValueError, match="格式错误"):
        parse_resident_id(full_width)
    with pytest.raises(Unprocessable):
        validate_patient(patient(full_width))


@pytest.mark.parametrize(
    "birth", ["19490230", "19490229", "19491301", "19490000", "00000101", "19491232"]
)
def test_impossible_date_is_refused(birth: str) -> None:
    first17 = f"110105{birth}002"
    with pytest.raises(ValueError, match="not a real date"):
        parse_resident_id(first17 + iso7064_mod11_2(first17))


def test_leap_day_is_a_real_date() -> None:
    assert parse_resident_id(number("110105", date(1948, 2, 29), "002")).birth_date == date(
        1948, 2, 29
    )


def test_future_birth_date_is_refused() -> None:
    tomorrow = date.today() + timedelta(days=2)
    with pytest.raises(ValueError, match="out of range"):
        parse_resident_id(number("110105", tomorrow, "002"))


def test_birth_before_1880_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_resident_id(number("110105", date(1879, 12, 31), "002"))


@pytest.mark.parametrize("wrong", "0123456789")
def test_wrong_check_character_is_refused(wrong: str) -> None:
    with pytest.raises(ValueError, match="check character"):
        parse_resident_id(SAMPLE[:17] + wrong)


areas = st.integers(0, 999_999).map(lambda n: f"{n:06d}")
births = st.dates(min_value=date(1900, 1, 1), max_value=date(2020, 12, 31))
sequences = st.integers(0, 999).map(lambda n: f"{n:03d}")


@given(areas, births, sequences)
def test_built_number_round_trips(area: str, born: date, seq: str) -> None:
    first17 = f"{area}{born:%Y%m%d}{seq}"
    value = first17 + check_character(first17)
    assert check_character(first17) == iso7064_mod11_2(first17)
    rid = parse_resident_id(value)
    assert rid.number == value
    assert rid.birth_date == born
    assert rid.gender == ("male" if int(seq[2]) % 2 == 1 else "female")


@given(areas, births, sequences, st.integers(0, 16), st.integers(1, 9))
def test_any_single_digit_change_is_refused(
    area: str, born: date, seq: str, position: int, shift: int
) -> None:
    value = number(area, born, seq)
    changed = str((int(value[position]) + shift) % 10)
    altered = value[:position] + changed + value[position + 1 :]
    assert altered != value
    with pytest.raises(ValueError):
        parse_resident_id(altered)


# -- the Patient -------------------------------------------------------------------------------


def test_consistent_patient_is_accepted() -> None:
    validate_patient(patient(SAMPLE, birthDate="1949-12-31", gender="female"))
    validate_patient(patient(SAMPLE))  # nothing to disagree with
    validate_patient(patient(SAMPLE, gender="unknown"))


def test_patient_without_resident_number_is_not_checked() -> None:
    validate_patient({"resourceType": "Patient", "birthDate": "2000-01-01"})
    validate_patient(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:yilian:sid:medical-insurance", "value": "12345"}],
        }
    )


def test_lower_case_x_is_refused_asking_for_upper_case() -> None:
    body = patient(SAMPLE.lower())
    body["identifier"].insert(0, {"system": "urn:yilian:sid:medical-insurance", "value": "1"})
    with pytest.raises(Unprocessable, match="upper-case X") as caught:
        validate_patient(body)
    assert caught.value.expression == ["Patient.identifier[1].value"]
    assert caught.value.status == 422


def test_invalid_number_in_patient_names_the_identifier() -> None:
    with pytest.raises(Unprocessable, match="check character") as caught:
        validate_patient(patient(SAMPLE[:17] + "1"))
    assert caught.value.expression == ["Patient.identifier[0].value"]


def test_missing_value_is_refused() -> None:
    with pytest.raises(Unprocessable, match="missing") as caught:
        validate_patient({"identifier": [{"system": RESIDENT_ID_SYSTEM}]})
    assert caught.value.expression == ["Patient.identifier[0].value"]


def test_birth_date_mismatch_names_both_expressions() -> None:
    with pytest.raises(Unprocessable, match="1949-12-31") as caught:
        validate_patient(patient(SAMPLE, birthDate="1949-12-30", gender="female"))
    assert caught.value.expression == ["Patient.birthDate", "Patient.identifier[0].value"]
    assert "Patient.birthDate 1949-12-30" in caught.value.diagnostics


def test_gender_mismatch_names_both_expressions() -> None:
    with pytest.raises(Unprocessable, match="gives female") as caught:
        validate_patient(patient(SAMPLE, birthDate="1949-12-31", gender="male"))
    assert caught.value.expression == ["Patient.gender", "Patient.identifier[0].value"]


def test_resident_id_of() -> None:
    assert resident_id_of(patient(SAMPLE)) == SAMPLE
    assert resident_id_of({"identifier": [{"system": "other", "value": SAMPLE}]}) is None
    assert resident_id_of({}) is None


# -- matching ----------------------------------------------------------------------------------

ZHAO = {
    "resourceType": "Patient",
    "name": [{"text": "赵淑芬", "family": "赵", "given": ["淑芬"]}],
    "gender": "female",
    "birthDate": "1958-04-03",
    "telecom": [{"system": "phone", "value": "138-0013-8000"}],
}


def test_same_person_scores_one_and_is_probable() -> None:
    probe = {
        "resourceType": "Patient",
        "name": [{"family": "赵", "given": ["淑", "芬"]}],
        "gender": "female",
        "birthDate": "1958-04-03",
        "telecom": [{"system": "phone", "value": "+86 138 0013 8000"}],
    }
    value = score(ZHAO, probe)
    assert value == 1.0
    assert grade(value, identifier_match=False) == "probable"


def test_different_person_scores_low_and_is_certainly_not() -> None:
    probe = {
        "resourceType": "Patient",
        "name": [{"text": "李建国"}],
        "gender": "male",
        "birthDate": "1971-09-15",
        "telecom": [{"system": "phone", "value": "13912345678"}],
    }
    value = score(ZHAO, probe)
    assert value < 0.2
    assert grade(value, identifier_match=False) == "certainly-not"


def test_partial_agreement_is_possible() -> None:
    # same birth date, sex and phone but no name to compare: 0.3 + 0.1 + 0.2
    probe = {k: v for k, v in ZHAO.items() if k != "name"}
    value = score(ZHAO, probe)
    assert value == 0.6
    assert grade(value, identifier_match=False) == "possible"


def test_email_is_not_a_phone() -> None:
    probe = {**ZHAO, "telecom": [{"system": "email", "value": "13800138000"}]}
    assert score(ZHAO, probe) == pytest.approx(0.8)


def test_identifier_match_is_certain_whatever_the_score() -> None:
    assert grade(0.0, identifier_match=True) == "certain"
    assert grade(0.59, identifier_match=False) == "certainly-not"
    assert grade(0.9, identifier_match=False) == "probable"
