"""Signed reports: RFC 8785 canonical JSON, the EdDSA JWS, the FHIR Signature, the keys."""

from __future__ import annotations

import base64
import copy
import json
import stat
import struct
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from security.signing import (
    Reason,
    SignatureInvalid,
    canonical_json,
    key_id,
    load_or_create_signing_key,
    provenance_signature,
    public_jwk,
    public_key_from_jwk,
    sign,
    verify,
    verify_signature,
)
from tests.fhir_schema import assert_r4

BEIJING = timezone(timedelta(hours=8))
WHEN = datetime(2024, 11, 5, 16, 42, 7, tzinfo=BEIJING)

REPORT: dict[str, Any] = {
    "resourceType": "DiagnosticReport",
    "id": "dr-7f3a",
    "meta": {"versionId": "3", "lastUpdated": "2024-11-05T16:42:07+08:00"},
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">胸部CT平扫：右肺上叶磨玻璃结节。</div>',
    },
    "identifier": [
        {"system": "urn:yilian:teleconsult", "value": "5d0c2b9e-8f51-4c1e-9a57-1f0e6c2d4b11"}
    ],
    "basedOn": [{"reference": "ServiceRequest/sr-1024"}],
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                    "code": "RAD",
                    "display": "Radiology",
                }
            ]
        }
    ],
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}],
        "text": "胸部CT平扫",
    },
    "subject": {"reference": "Patient/p-88", "display": "张秀兰"},
    "effectiveDateTime": "2024-11-05T09:15:00+08:00",
    "issued": "2024-11-05T16:40:00+08:00",
    "performer": [{"reference": "Organization/CITY_FIRST", "display": "市第一人民医院"}],
    "resultsInterpreter": [{"reference": "Practitioner/pr-li", "display": "李建国 主任医师"}],
    "imagingStudy": [{"reference": "ImagingStudy/is-55"}],
    "conclusion": "右肺上叶见一磨玻璃结节，直径约8 mm，边界清楚；建议3个月后复查胸部CT。",
    "conclusionCode": [
        {
            "coding": [
                {
                    "system": "http://snomed.info/sct",
                    "code": "427359005",
                    "display": "Solitary nodule of lung",
                }
            ],
            "text": "肺结节",
        }
    ],
}


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def kid(key: Ed25519PrivateKey) -> str:
    return key_id(key.public_key())


@pytest.fixture(scope="module")
def keys(key: Ed25519PrivateKey, kid: str) -> dict[str, Ed25519PublicKey]:
    return {kid: key.public_key()}


@pytest.fixture
def report() -> dict[str, Any]:
    return copy.deepcopy(REPORT)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _segments(jws: str) -> tuple[dict[str, Any], bytes, bytes]:
    header, payload, signature = jws.split(".")
    return json.loads(_unb64url(header)), _unb64url(payload), _unb64url(signature)


def _reason(resource: dict[str, Any], jws: str, keys: dict[str, Ed25519PublicKey]) -> Reason:
    with pytest.raises(SignatureInvalid) as caught:
        verify(resource, jws, keys)
    return caught.value.reason


# -- RFC 8785 ----------------------------------------------------------------------------------


def test_rfc8785_section_3_2_2_example() -> None:
    # the input of RFC 8785 3.2.2, as JSON text (number spellings matter)
    text = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(json.loads(text)) == expected.encode()


def test_rfc8785_sorts_keys_by_utf16_code_units() -> None:
    # RFC 8785 3.2.3: the emoji (a surrogate pair, D83D) sorts before U+FB33
    data = json.loads(
        '{"\\u20ac": "Euro Sign", "\\r": "Carriage Return", "\\ufb33": "Hebrew Letter Dalet With'
        ' Dagesh", "1": "One", "\\ud83d\\ude00": "Emoji: Grinning Face", "\\u0080": "Control",'
        ' "\\u00f6": "Latin Small Letter O With Diaeresis"}'
    )
    order = list(json.loads(canonical_json(data)).values())
    assert order == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]


@pytest.mark.parametrize(
    ("ieee", "expected"),
    [  # RFC 8785 appendix B
        ("0000000000000000", "0"),
        ("8000000000000000", "0"),
        ("0000000000000001", "5e-324"),
        ("8000000000000001", "-5e-324"),
        ("7fefffffffffffff", "1.7976931348623157e+308"),
        ("ffefffffffffffff", "-1.7976931348623157e+308"),
        ("4340000000000000", "9007199254740992"),
        ("c340000000000000", "-9007199254740992"),
        ("4430000000000000", "295147905179352830000"),
        ("44b52d02c7e14af5", "9.999999999999997e+22"),
        ("44b52d02c7e14af6", "1e+23"),
        ("44b52d02c7e14af7", "1.0000000000000001e+23"),
        ("444b1ae4d6e2ef4e", "999999999999999700000"),
        ("444b1ae4d6e2ef4f", "999999999999999900000"),
        ("444b1ae4d6e2ef50", "1e+21"),
        ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
        ("3eb0c6f7a0b5ed8d", "0.000001"),
        ("41b3de4355555553", "333333333.3333332"),
        ("41b3de4355555554", "333333333.33333325"),
        ("41b3de4355555555", "333333333.3333333"),
        ("41b3de4355555556", "333333333.3333334"),
        ("41b3de4355555557", "333333333.33333343"),
        ("becbf647612f3696", "-0.0000033333333333333333"),
        ("43143ff3c1cb0959", "1424953923781206.2"),
    ],
)
def test_rfc8785_number_vectors(ieee: str, expected: str) -> None:
    (number,) = struct.unpack(">d", bytes.fromhex(ieee))
    assert canonical_json({"n": number}) == b'{"n":' + expected.encode() + b"}"


@pytest.mark.parametrize(
    ("json_number", "expected"),
    [  # FHIR integers and decimals as the wire JSON spells them
        ("0", "0"),
        ("-7", "-7"),
        ("120", "120"),
        ("0.1", "0.1"),
        ("1.50", "1.5"),
        ("1.0", "1"),
        ("-0.0", "0"),
        ("1e21", "1e+21"),
        ("1e20", "100000000000000000000"),
        ("0.0000001", "1e-7"),
        ("36.6", "36.6"),
    ],
)
def test_fhir_numbers(json_number: str, expected: str) -> None:
    parsed = json.loads('{"value": ' + json_number + "}")
    assert canonical_json(parsed) == b'{"value":' + expected.encode() + b"}"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**53, "\ud800"])
def test_values_without_a_canonical_form_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        canonical_json({"value": value})


def test_chinese_is_raw_utf8_and_control_characters_are_escaped() -> None:
    assert canonical_json({"conclusion": "肺结节\t\n\x01\x7f"}) == (
        '{"conclusion":"肺结节\\t\\n\\u0001\x7f"}'.encode()
    )
    assert canonical_json({"乙": 1, "甲": 2, "b": 3}) == '{"b":3,"乙":1,"甲":2}'.encode()


def test_id_meta_and_narrative_are_left_out_but_nested_text_stays(
    report: dict[str, Any],
) -> None:
    content = json.loads(canonical_json(report))
    assert not {"id", "meta", "text"} & content.keys()
    assert content["code"]["text"] == "胸部CT平扫"
    assert content["conclusionCode"][0]["text"] == "肺结节"
    assert canonical_json(report) == canonical_json(json.loads(json.dumps(report, indent=2)))


# -- sign and verify ---------------------------------------------------------------------------


def test_round_trip(report: dict[str, Any], key: Ed25519PrivateKey, kid: str, keys: Any) -> None:
    jws = sign(report, key, kid)
    header, payload, _ = _segments(jws)
    assert header == {"alg": "EdDSA", "kid": kid}
    assert payload == canonical_json(report)  # the receiver reads exactly what was signed
    assert json.loads(payload)["conclusion"] == REPORT["conclusion"]
    assert verify(report, jws, keys) == {"alg": "EdDSA", "kid": kid}


def test_the_receivers_copy_with_its_own_id_meta_and_narrative_verifies(
    report: dict[str, Any], key: Ed25519PrivateKey, kid: str, keys: Any
) -> None:
    jws = sign(report, key, kid)
    received = json.loads(json.dumps(report, ensure_ascii=True))
    received["id"] = "township-0001"
    received["meta"] = {"versionId": "1", "lastUpdated": "2024-11-05T16:45:00+08:00"}
    received["text"] = {"status": "generated", "div": "<div>另一种叙述</div>"}
    verify(received, jws, keys)
    del received["id"], received["meta"], received["text"]
    verify(received, jws, keys)


def _change_conclusion(r: dict[str, Any]) -> None:
    r["conclusion"] = r["conclusion"].replace("3个月", "6个月")


def _change_coding(r: dict[str, Any]) -> None:
    r["conclusionCode"][0]["coding"][0]["code"] = "254637007"


def _change_status(r: dict[str, Any]) -> None:
    r["status"] = "preliminary"


def _change_patient(r: dict[str, Any]) -> None:
    r["subject"]["reference"] = "Patient/p-89"


def _change_code_text(r: dict[str, Any]) -> None:
    r["code"]["text"] = "头颅CT平扫"


def _add_element(r: dict[str, Any]) -> None:
    r["presentedForm"] = [{"contentType": "text/plain", "data": "5pS5"}]


@pytest.mark.parametrize(
    "change",
    [
        _change_conclusion,
        _change_coding,
        _change_status,
        _change_patient,
        _change_code_text,
        _add_element,
    ],
)
def test_a_changed_clinical_field_fails(
    report: dict[str, Any], key: Ed25519PrivateKey, kid: str, keys: Any, change: Any
) -> None:
    jws = sign(report, key, kid)
    change(report)
    assert _reason(report, jws, keys) is Reason.CONTENT_DIFFERS


def test_another_key_under_the_same_kid_is_a_bad_signature(
    report: dict[str, Any], kid: str, keys: Any
) -> None:
    forged = sign(report, Ed25519PrivateKey.generate(), kid)
    assert _reason(report, forged, keys) is Reason.BAD_SIGNATURE


def test_unknown_kid(report: dict[str, Any], key: Ed25519PrivateKey, keys: Any) -> None:
    other = Ed25519PrivateKey.generate()
    assert _reason(report, sign(report, other, key_id(other.public_key())), keys) == (
        Reason.UNKNOWN_KEY
    )
    no_kid = jwt.api_jws.encode(
        canonical_json(report), key, algorithm="EdDSA", headers={"typ": None}
    )
    assert _reason(report, no_kid, keys) is Reason.UNKNOWN_KEY


def test_tampered_jws(report: dict[str, Any], key: Ed25519PrivateKey, kid: str, keys: Any) -> None:
    jws = sign(report, key, kid)
    header, payload, signature = jws.split(".")
    # a new payload under the old signature (the payload matches the changed report)
    changed = copy.deepcopy(report)
    _change_conclusion(changed)
    swapped = f"{header}.{_b64url(canonical_json(changed))}.{signature}"
    assert _reason(changed, swapped, keys) is Reason.BAD_SIGNATURE
    # one flipped bit in the signature
    raw = bytearray(_unb64url(signature))
    raw[10] ^= 0x01
    assert _reason(report, f"{header}.{payload}.{_b64url(bytes(raw))}", keys) == (
        Reason.BAD_SIGNATURE
    )
    # a header with another kid added (the signature covers the header too)
    header2 = _b64url(json.dumps({"alg": "EdDSA", "kid": kid, "x": 1}).encode())
    assert _reason(report, f"{header2}.{payload}.{signature}", keys) is Reason.BAD_SIGNATURE
    # truncated signature
    assert _reason(report, f"{header}.{payload}.{signature[:40]}", keys) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "a.b", "!!.$$.%%", "e30.e30", "W10.e30.AA", "eyJhbGciOiJFZERTQSJ9..x.y"],
)
def test_malformed_jws(report: dict[str, Any], keys: Any, garbage: str) -> None:
    assert _reason(report, garbage, keys) in {Reason.MALFORMED, Reason.ALGORITHM}


def test_non_string_jws_is_malformed(report: dict[str, Any], keys: Any) -> None:
    assert _reason(report, b"a.b.c", keys) is Reason.MALFORMED  # type: ignore[arg-type]


def test_alg_none_is_refused(report: dict[str, Any], kid: str, keys: Any) -> None:
    header = _b64url(json.dumps({"alg": "none", "kid": kid}).encode())
    unsigned = f"{header}.{_b64url(canonical_json(report))}."
    assert _reason(report, unsigned, keys) is Reason.ALGORITHM
    assert _reason(report, unsigned + "AAAA", keys) is Reason.ALGORITHM
    lowercase = _b64url(json.dumps({"alg": "eddsa", "kid": kid}).encode())
    assert _reason(report, f"{lowercase}.{_b64url(canonical_json(report))}.", keys) == (
        Reason.ALGORITHM
    )


def test_hs256_with_the_public_key_as_secret_is_refused(
    report: dict[str, Any], key: Ed25519PrivateKey, kid: str, keys: Any
) -> None:
    # the classic confusion: an HMAC keyed with the (public) verification key
    raw_public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    forged = jwt.api_jws.encode(
        canonical_json(report), raw_public, algorithm="HS256", headers={"kid": kid}
    )
    assert _reason(report, forged, keys) is Reason.ALGORITHM


def test_typ_jwt_and_critical_extensions_are_refused(
    report: dict[str, Any], key: Ed25519PrivateKey, kid: str, keys: Any
) -> None:
    token = jwt.api_jws.encode(
        canonical_json(report), key, algorithm="EdDSA", headers={"kid": kid, "typ": "JWT"}
    )
    assert _reason(report, token, keys) is Reason.MALFORMED
    jose = jwt.api_jws.encode(
        canonical_json(report), key, algorithm="EdDSA", headers={"kid": kid, "typ": "JOSE"}
    )
    verify(report, jose, keys)
    detached = jwt.api_jws.encode(
        canonical_json(report),
        key,
        algorithm="EdDSA",
        headers={"kid": kid},
        is_payload_detached=True,
    )
    assert _reason(report, detached, keys) is Reason.MALFORMED


def test_sign_needs_a_kid(report: dict[str, Any], key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="kid"):
        sign(report, key, "")


# -- the FHIR Signature ------------------------------------------------------------------------


def _provenance(report: dict[str, Any], signature: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "target": [{"reference": "DiagnosticReport/dr-7f3a"}],
        "recorded": "2024-11-05T16:42:07+08:00",
        "agent": [{"who": {"reference": "Practitioner/pr-li"}}],
        "signature": [signature],
    }


def test_provenance_signature(
    report: dict[str, Any], key: Ed25519PrivateKey, kid: str, keys: Any
) -> None:
    signature = provenance_signature(report, key, kid, "Practitioner/pr-li", WHEN)
    assert signature["type"] == [
        {
            "system": "urn:iso-astm:E1762-95:2013",
            "code": "1.2.840.10065.1.12.1.1",
            "display": "Author's Signature",
        }
    ]
    assert signature["when"] == "2024-11-05T16:42:07+08:00"
    assert signature["who"] == {"reference": "Practitioner/pr-li"}
    assert signature["targetFormat"] == "application/fhir+json"
    assert signature["sigFormat"] == "application/jose"
    jws = base64.b64decode(signature["data"], validate=True).decode("ascii")
    header, payload, _ = _segments(jws)
    assert header == {"alg": "EdDSA", "kid": kid, "sigT": "2024-11-05T08:42:07Z"}
    assert payload == canonical_json(report)
    assert_r4(_provenance(report, signature))
    assert_r4(report)

    assert verify_signature(report, signature, keys)["kid"] == kid
    # the same instant written in UTC is the same time
    verify_signature(report, {**signature, "when": "2024-11-05T08:42:07Z"}, keys)


def test_provenance_signature_fails_for_changed_content_or_time(
    report: dict[str, Any], key: Ed25519PrivateKey, kid: str, keys: Any
) -> None:
    signature = provenance_signature(report, key, kid, "Practitioner/pr-li", WHEN)
    changed = copy.deepcopy(report)
    _change_status(changed)
    with pytest.raises(SignatureInvalid) as caught:
        verify_signature(changed, signature, keys)
    assert caught.value.reason is Reason.CONTENT_DIFFERS

    later = {**signature, "when": "2024-11-06T16:42:07+08:00"}
    with pytest.raises(SignatureInvalid) as caught:
        verify_signature(report, later, keys)
    assert caught.value.reason is Reason.TIME_DIFFERS

    with pytest.raises(SignatureInvalid) as caught:
        verify_signature(report, signature, {})
    assert caught.value.reason is Reason.UNKNOWN_KEY


@pytest.mark.parametrize(
    "change",
    [
        {"sigFormat": "application/signature+xml"},
        {"sigFormat": None},
        {"targetFormat": "application/fhir+xml"},
        {"data": "not base64!"},
        {"data": None},
        {"data": base64.b64encode("签名".encode()).decode()},
        {"when": "2024-11-05T16:42:07"},  # no zone: not an instant
        {"when": None},
    ],
)
def test_malformed_signature_element(
    report: dict[str, Any], key: Ed25519PrivateKey, kid: str, keys: Any, change: dict[str, Any]
) -> None:
    signature = provenance_signature(report, key, kid, "Practitioner/pr-li", WHEN)
    signature.update(change)
    with pytest.raises(SignatureInvalid) as caught:
        verify_signature(report, {k: v for k, v in signature.items() if v is not None}, keys)
    assert caught.value.reason is Reason.MALFORMED


def test_a_jws_without_signing_time_is_not_a_provenance_signature(
    report: dict[str, Any], key: Ed25519PrivateKey, kid: str, keys: Any
) -> None:
    signature = provenance_signature(report, key, kid, "Practitioner/pr-li", WHEN)
    signature["data"] = base64.b64encode(sign(report, key, kid).encode()).decode()
    with pytest.raises(SignatureInvalid) as caught:
        verify_signature(report, signature, keys)
    assert caught.value.reason is Reason.MALFORMED


def test_provenance_signature_needs_an_aware_time(
    report: dict[str, Any], key: Ed25519PrivateKey, kid: str
) -> None:
    with pytest.raises(ValueError, match="time zone"):
        provenance_signature(report, key, kid, "Practitioner/pr-li", datetime(2024, 11, 5))
    utc = provenance_signature(
        report, key, kid, "Practitioner/pr-li", datetime(2024, 11, 5, 8, 0, 0, 250_000, UTC)
    )
    assert utc["when"] == "2024-11-05T08:00:00+00:00"


# -- keys --------------------------------------------------------------------------------------

# RFC 8037 appendix A: the Ed25519 key, its thumbprint and a signature made with it
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_JWS = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcv"
    "Mg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)


def test_rfc8037_thumbprint_and_jwk() -> None:
    public = public_key_from_jwk({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X})
    assert key_id(public) == RFC8037_THUMBPRINT
    private = Ed25519PrivateKey.from_private_bytes(_unb64url(RFC8037_D))
    assert public_jwk(private.public_key(), "k1")["x"] == RFC8037_X
    assert key_id(private) == RFC8037_THUMBPRINT
    # A.4's JWS verifies with the key read from the JWK
    signing_input, _, signature = RFC8037_JWS.rpartition(".")
    public.verify(_unb64url(signature), signing_input.encode())


def test_jwk_round_trip(key: Ed25519PrivateKey, kid: str) -> None:
    jwk = public_jwk(key.public_key(), kid)
    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": jwk["x"],
        "kid": kid,
        "use": "sig",
        "alg": "EdDSA",
    }
    assert "d" not in jwk
    back = public_key_from_jwk(json.loads(json.dumps(jwk)))
    assert key_id(back) == kid
    assert _raw(back) == _raw(key.public_key())


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        ({"kty": "EC", "crv": "P-256", "x": RFC8037_X}, "not OKP Ed25519"),
        ({"kty": "OKP", "crv": "Ed448", "x": RFC8037_X}, "not OKP Ed25519"),
        ({"kty": "OKP", "crv": "X25519", "x": RFC8037_X}, "not OKP Ed25519"),
        ({"crv": "Ed25519", "x": RFC8037_X}, "not OKP Ed25519"),
        ({"kty": "OKP", "crv": "Ed25519"}, "32-byte"),
        ({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X[:-2]}, "32-byte"),
        ({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X + "="}, "32-byte"),
        ({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X.replace("_", "/")}, "32-byte"),
        ({"kty": "OKP", "crv": "Ed25519", "x": 12}, "32-byte"),
        ({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "d": RFC8037_D}, "private"),
        ({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "use": "enc"}, "not EdDSA"),
        ({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "alg": "ES256"}, "not EdDSA"),
    ],
)
def test_bad_jwk(jwk: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        public_key_from_jwk(jwk)


def test_key_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "var" / "keys" / "report-signing.pem"
    first = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["report-signing.pem"]
    second = load_or_create_signing_key(path)
    assert key_id(second) == key_id(first)
    assert key_id(load_or_create_signing_key(tmp_path / "other.pem")) != key_id(first)


def test_existing_key_file_wins_over_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "report-signing.pem"
    theirs = Ed25519PrivateKey.generate()
    path.write_bytes(
        theirs.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert key_id(load_or_create_signing_key(path)) == key_id(theirs)


def test_a_key_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "report-signing.pem"
    path.write_bytes(
        Ed448PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        load_or_create_signing_key(path)
    path.write_text("not a key")
    with pytest.raises(ValueError, match="not a PEM private key"):
        load_or_create_signing_key(path)
