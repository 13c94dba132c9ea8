"""HL7 v2 data types to FHIR data types (adapters.hl7v2.mapping.datatypes)."""

from __future__ import annotations

import re

import pytest

from adapters.hl7v2.errors import DATA_TYPE_ERROR, Hl7Error, Location
from adapters.hl7v2.mapping.datatypes import (
    code_system,
    cwe,
    cx,
    date_only,
    dtm,
    xad,
    xcn,
    xpn,
    xtn,
)
from records.identity import MEDICAL_INSURANCE_SYSTEM, RESIDENT_ID_SYSTEM

WHERE = Location("OBX", 4, 14)

# The FHIR R4 dateTime regular expression, copied from the specification (datatypes).
FHIR_DATETIME = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|"
    r"3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3])"
    r":[0-5][0-9]|14:00)))?)?)?"
)

# --- DTM ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2024", "2024"),
        ("202402", "2024-02"),
        ("20240229", "2024-02-29"),
        ("2024022912", "2024-02-29T12:00:00+08:00"),
        ("202402291230", "2024-02-29T12:30:00+08:00"),
        ("20240229123045", "2024-02-29T12:30:45+08:00"),
        ("20240229123045+0800", "2024-02-29T12:30:45+08:00"),
        ("20240229123045-0500", "2024-02-29T12:30:45-05:00"),
        ("20240229123045+0530", "2024-02-29T12:30:45+05:30"),
        ("20240229123045+0000", "2024-02-29T12:30:45Z"),
        ("20240229123045.1", "2024-02-29T12:30:45.1+08:00"),
        ("20240229123045.1234-0500", "2024-02-29T12:30:45.1234-05:00"),
        ("  20240229  ", "2024-02-29"),
    ],
)
def test_dtm(value: str, expected: str) -> None:
    result = dtm(value, WHERE)
    assert result == expected
    assert FHIR_DATETIME.fullmatch(result)


def test_dtm_local_time_takes_the_default_zone() -> None:
    assert dtm("20240101080000", WHERE) == "2024-01-01T08:00:00+08:00"
    assert dtm("20240101080000", WHERE, default_tz="+09:00") == "2024-01-01T08:00:00+09:00"
    assert dtm("20240101080000-0300", WHERE, default_tz="+09:00") == "2024-01-01T08:00:00-03:00"


@pytest.mark.parametrize("value", ["", "   ", '""'])
def test_dtm_empty_is_none(value: str) -> None:
    assert dtm(value, WHERE) is None


@pytest.mark.parametrize(
    "value",
    [
        "202413",  # month 13
        "202400",  # month 0
        "20230229",  # not a leap year
        "20240431",  # April 31st
        "20240101250000",  # hour 25
        "20240101246000",
        "20240101126100",  # minute 61
        "20240101120061",  # second 61
        "2024-01-01",
        "24",
        "20240101T1200",
        "abcd",
        "20240101120000+08",
        "20240101120000 +0800",
    ],
)
def test_dtm_invalid_raises_naming_the_location(value: str) -> None:
    with pytest.raises(Hl7Error) as info:
        dtm(value, WHERE)
    err = info.value
    assert err.where == WHERE
    assert str(err).startswith("OBX-14: ")
    assert value.strip() in str(err)
    assert err.code == DATA_TYPE_ERROR
    assert err.reject is False


@pytest.mark.parametrize(
    "value",
    [
        "20240101120000+2500",
        "20240101120000+0860",
        "20240101120000-1401",
        "20240101120000+1430",
        "20240101120000-9999",
    ],
)
def test_dtm_impossible_offset_raises(value: str) -> None:
    with pytest.raises(Hl7Error) as info:
        dtm(value, WHERE)
    assert info.value.where == WHERE
    assert str(info.value).startswith("OBX-14: ")
    assert value in str(info.value)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("20240101120000+1400", "2024-01-01T12:00:00+14:00"),
        ("20240101120000-1400", "2024-01-01T12:00:00-14:00"),
        ("20240101120000-1359", "2024-01-01T12:00:00-13:59"),
        ("20240101120000+0545", "2024-01-01T12:00:00+05:45"),
    ],
)
def test_dtm_offsets_up_to_14_hours(value: str, expected: str) -> None:
    result = dtm(value, WHERE)
    assert result == expected
    assert FHIR_DATETIME.fullmatch(result)


@pytest.mark.parametrize("value", ["202401011200.5", "2024010112.5", "2024.5", "20240101.1+0800"])
def test_dtm_fraction_without_seconds_raises(value: str) -> None:
    with pytest.raises(Hl7Error) as info:
        dtm(value, WHERE)
    assert info.value.where == WHERE
    assert value in str(info.value)


def test_date_only() -> None:
    assert date_only("20240229123045+0800", WHERE) == "2024-02-29"
    assert date_only("19520314", WHERE) == "1952-03-14"
    assert date_only("", WHERE) is None
    with pytest.raises(Hl7Error):
        date_only("19520230", WHERE)


# --- XPN ------------------------------------------------------------------------------------


def test_xpn_chinese_name_text_is_family_then_given_without_space() -> None:
    assert xpn(["王", "秀英", "", "", "", "", "L"]) == {
        "family": "王",
        "given": ["秀英"],
        "text": "王秀英",
        "use": "official",
    }
    assert xpn(["欧阳", "娜娜"])["text"] == "欧阳娜娜"  # type: ignore[index]


def test_xpn_western_name() -> None:
    assert xpn(["Smith", "John", "Quincy", "Jr", "Dr", "", "D"]) == {
        "family": "Smith",
        "given": ["John", "Quincy"],
        "prefix": ["Dr"],
        "suffix": ["Jr"],
        "use": "usual",
    }


def test_xpn_partial_and_empty() -> None:
    assert xpn(["Smith"]) == {"family": "Smith"}
    assert xpn(["", "秀英"]) == {"given": ["秀英"], "text": "秀英"}
    assert xpn([]) is None
    assert xpn(["", "", "", "", "Dr"]) is None


# --- XAD ------------------------------------------------------------------------------------


def test_xad_chinese_address_text_runs_from_province_down() -> None:
    comps = ["幸福路1号", "3单元", "信阳市", "河南省", "464000", "CHN", "H", "", "光山县"]
    assert xad(comps) == {
        "line": ["幸福路1号", "3单元"],
        "city": "信阳市",
        "district": "光山县",
        "state": "河南省",
        "postalCode": "464000",
        "country": "CHN",
        "text": "河南省信阳市光山县幸福路1号3单元",
        "use": "home",
    }


def test_xad_western_address() -> None:
    assert xad(["1 Main St", "", "Springfield", "IL", "62701", "USA", "B"]) == {
        "line": ["1 Main St"],
        "city": "Springfield",
        "state": "IL",
        "postalCode": "62701",
        "country": "USA",
        "use": "work",
    }


def test_xad_empty() -> None:
    assert xad([]) is None
    assert xad(["", "", "", "", "", "", "H"]) is None


# --- XTN ------------------------------------------------------------------------------------


def test_xtn_v23_layout_number_in_first_component() -> None:
    assert xtn(["(0376)8888-1234", "WPN", "PH"]) == {
        "system": "phone",
        "value": "(0376)8888-1234",
        "use": "work",
    }


def test_xtn_v25_layout_area_and_local_number() -> None:
    assert xtn(["", "PRN", "PH", "", "86", "0376", "88881234"]) == {
        "system": "phone",
        "value": "037688881234",
        "use": "home",
    }


def test_xtn_v25_unformatted_number_and_mobile() -> None:
    comps = ["", "PRN", "CP", "", "", "", "", "", "", "", "", "13800000000"]
    assert xtn(comps) == {"system": "phone", "value": "13800000000", "use": "mobile"}


def test_xtn_fax() -> None:
    assert xtn(["88881234", "WPN", "FX"]) == {"system": "fax", "value": "88881234", "use": "work"}


@pytest.mark.parametrize(
    "comps",
    [["", "NET", "Internet", "wang@example.cn"], ["", "", "", "wang@example.cn"]],
)
def test_xtn_email(comps: list[str]) -> None:
    assert xtn(comps) == {"system": "email", "value": "wang@example.cn"}


def test_xtn_empty() -> None:
    assert xtn([]) is None
    assert xtn(["", "PRN", "PH"]) is None


# --- CWE ------------------------------------------------------------------------------------


def test_cwe_loinc() -> None:
    assert cwe(["2093-3", "总胆固醇", "LN"]) == {
        "coding": [{"code": "2093-3", "system": "http://loinc.org", "display": "总胆固醇"}],
        "text": "总胆固醇",
    }


def test_cwe_hl7_table_and_alternate_local_code() -> None:
    assert cwe(["H", "High", "HL70078", "GAO", "偏高", "XZ01-LIS"]) == {
        "coding": [
            {
                "code": "H",
                "system": "http://terminology.hl7.org/CodeSystem/v2-0078",
                "display": "High",
            },
            {"code": "GAO", "system": "urn:yilian:cs:XZ01-LIS", "display": "偏高"},
        ],
        "text": "High",
    }


def test_cwe_text_only_and_code_only() -> None:
    assert cwe(["", "血常规"]) == {"text": "血常规"}
    assert cwe(["X1"]) == {"coding": [{"code": "X1"}]}
    assert cwe([]) is None


@pytest.mark.parametrize(
    "name, uri",
    [
        ("LN", "http://loinc.org"),
        ("ln", "http://loinc.org"),
        ("SCT", "http://snomed.info/sct"),
        ("I10", "http://hl7.org/fhir/sid/icd-10"),
        ("HL70203", "http://terminology.hl7.org/CodeSystem/v2-0203"),
        ("urn:oid:1.2.3", "urn:oid:1.2.3"),
        ("LOCAL", "urn:yilian:cs:LOCAL"),
        ("  ", None),
    ],
)
def test_code_system(name: str, uri: str | None) -> None:
    assert code_system(name) == uri


# --- CX -------------------------------------------------------------------------------------

RESIDENT = "11010519491231002X"


def test_cx_resident_identity_number_by_type() -> None:
    assert cx([RESIDENT, "", "", "", "NNCHN"], "XZ01") == {
        "value": RESIDENT,
        "system": RESIDENT_ID_SYSTEM,
        "use": "official",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NNCHN"}]
        },
    }


def test_cx_resident_identity_number_by_authority_oid() -> None:
    ident = cx([RESIDENT, "", "", "GA&2.16.156.10011.1.3&ISO"], "XZ01")
    assert ident == {"value": RESIDENT, "system": RESIDENT_ID_SYSTEM, "use": "official"}


def test_cx_other_oid_with_the_resident_oid_as_prefix_is_not_resident() -> None:
    ident = cx(["MR-7", "", "", "XZ01&2.16.156.10011.1.30&ISO", "MR"], "DEFAULT")
    assert ident is not None
    assert ident["system"] != RESIDENT_ID_SYSTEM
    assert ident["system"] == "urn:yilian:mrn:XZ01"


@pytest.mark.parametrize(
    "authority",
    [
        "&2.16.156.10011.1.3&ISO",
        "GA&urn:oid:2.16.156.10011.1.3&ISO",
        "2.16.156.10011.1.3",
        "2.16.156.10011.1.3&&",
    ],
)
def test_cx_resident_identity_number_by_exact_authority(authority: str) -> None:
    ident = cx([RESIDENT, "", "", authority], "XZ01")
    assert ident is not None and ident["system"] == RESIDENT_ID_SYSTEM


@pytest.mark.parametrize(
    "authority",
    ["XZ&1.2.16.156.10011.1.3&ISO", "2.16.156.10011.1.3.1", "GA&2.16.156.10011.1&ISO"],
)
def test_cx_authority_that_only_contains_the_resident_oid_is_not_resident(
    authority: str,
) -> None:
    ident = cx(["MR-7", "", "", authority, "MR"], "DEFAULT")
    assert ident is not None and ident["system"] != RESIDENT_ID_SYSTEM


def test_cx_type_ri_is_a_resource_identifier_not_the_resident_number() -> None:
    ident = cx(["R-1", "", "", "XZ01", "RI"], "DEFAULT")
    assert ident is not None
    assert ident["system"] == "urn:yilian:mrn:XZ01"
    assert ident["type"]["coding"][0]["code"] == "RI"


def test_cx_type_mi_is_a_military_id_not_insurance() -> None:
    ident = cx(["M-1", "", "", "XZ01", "MI"], "DEFAULT")
    assert ident is not None and ident["system"] == "urn:yilian:mrn:XZ01"


def test_cx_medical_record_number_with_authority() -> None:
    assert cx(["XF0042", "", "", "XZ01&1.2.156.1&ISO", "MR"], "DEFAULT") == {
        "value": "XF0042",
        "system": "urn:yilian:mrn:XZ01",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
        },
    }


def test_cx_without_authority_uses_the_default_assigner() -> None:
    assert cx(["XF0042"], "XINGFU_THC") == {
        "value": "XF0042",
        "system": "urn:yilian:mrn:XINGFU_THC",
    }


@pytest.mark.parametrize(
    "comps",
    [["Y1", "", "", "", "SN"], ["Y1", "", "", "", "MC"], ["Y1", "", "", "YB", ""]],
)
def test_cx_medical_insurance(comps: list[str]) -> None:
    ident = cx(comps, "D")
    assert ident is not None and ident["system"] == MEDICAL_INSURANCE_SYSTEM


def test_cx_empty_value() -> None:
    assert cx(["", "", "", "XZ01", "MR"], "D") is None
    assert cx([], "D") is None


# --- XCN ------------------------------------------------------------------------------------


def test_xcn_chinese_doctor_with_authority() -> None:
    assert xcn(["D001", "李", "明", "", "", "", "", "", "XZ01&1.2.3&ISO"]) == {
        "identifier": {"value": "D001", "system": "urn:yilian:staff:XZ01"},
        "display": "李明",
    }


def test_xcn_western_name_without_identifier() -> None:
    assert xcn(["", "Smith", "John"]) == {"display": "John Smith"}


def test_xcn_identifier_only_and_empty() -> None:
    assert xcn(["D002"]) == {"identifier": {"value": "D002"}}
    assert xcn([]) is None
