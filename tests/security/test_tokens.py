"""Signed bearer tokens: the signing key on disk, issue and verify."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security import tokens
from security.principal import Principal, Role
from security.tokens import KEY_FILE, InvalidToken, TokenIssuer, load_or_create_signing_key

ISSUER = "https://yilian.test"
RESIDENT = Principal("resident.zhao", Role.RESIDENT, "XINGFU_THC", patient_id="42")
DOCTOR = Principal(
    "doctor.xingfu", Role.TOWNSHIP_DOCTOR, "XINGFU_THC", practitioner_id="P7", source="10.0.0.1"
)


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def issuer(key: Ed25519PrivateKey) -> TokenIssuer:
    return TokenIssuer(key, ISSUER, ttl_seconds=600)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- the key -----------------------------------------------------------------------------------


def test_key_is_created_private_and_reused(tmp_path: Path) -> None:
    keys_dir = tmp_path / "var" / "keys"
    first = load_or_create_signing_key(keys_dir)
    path = keys_dir / KEY_FILE
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700

    second = load_or_create_signing_key(keys_dir)
    assert _public_bytes(second) == _public_bytes(first)
    # and a token signed with the first key verifies with the reloaded one
    token = TokenIssuer(first, ISSUER, 60).issue(DOCTOR)
    assert TokenIssuer(second, ISSUER, 60).verify(token).username == DOCTOR.username


def test_two_folders_get_different_keys(tmp_path: Path) -> None:
    a = load_or_create_signing_key(tmp_path / "a")
    b = load_or_create_signing_key(tmp_path / "b")
    assert _public_bytes(a) != _public_bytes(b)


def test_a_key_file_of_another_type_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / KEY_FILE).write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SystemExit, match="not an Ed25519 private key"):
        load_or_create_signing_key(tmp_path)


# -- issue and verify --------------------------------------------------------------------------


@pytest.mark.parametrize("who", [RESIDENT, DOCTOR], ids=["resident", "doctor"])
def test_round_trip_keeps_the_principal(issuer: TokenIssuer, who: Principal) -> None:
    back = issuer.verify(issuer.issue(who))
    assert back.username == who.username
    assert back.role is who.role
    assert back.organization == who.organization
    assert back.patient_id == who.patient_id
    assert back.practitioner_id == who.practitioner_id
    # the network address is the request's, not the token's
    assert back.source is None


def test_claims_carry_expiry_and_scope(issuer: TokenIssuer, key: Ed25519PrivateKey) -> None:
    before = int(time.time())
    token = issuer.issue(RESIDENT, scope="patient/*.read")
    claims = jwt.decode(token, key.public_key(), algorithms=["EdDSA"], issuer=ISSUER)
    assert claims["exp"] - claims["iat"] == 600
    assert before <= claims["iat"] <= int(time.time())
    assert claims["scope"] == "patient/*.read"
    assert claims["role"] == "resident" and claims["patient"] == "42"
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    # every token is distinct
    assert issuer.issue(RESIDENT) != issuer.issue(RESIDENT)


def test_expired_token_is_refused(issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    real = time.time()
    monkeypatch.setattr(tokens.time, "time", lambda: real - 3600)
    token = issuer.issue(DOCTOR)  # issued an hour ago, valid for ten minutes
    monkeypatch.undo()
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(token)


def test_token_just_within_its_lifetime_is_accepted(
    issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time()
    monkeypatch.setattr(tokens.time, "time", lambda: real - 540)
    token = issuer.issue(DOCTOR)
    monkeypatch.undo()
    assert issuer.verify(token).username == DOCTOR.username


def test_token_signed_by_another_key_is_refused(issuer: TokenIssuer) -> None:
    stranger = TokenIssuer(Ed25519PrivateKey.generate(), ISSUER, 600)
    with pytest.raises(InvalidToken):
        issuer.verify(stranger.issue(DOCTOR))


def test_token_from_another_issuer_is_refused(issuer: TokenIssuer, key: Ed25519PrivateKey) -> None:
    other = TokenIssuer(key, "https://elsewhere.test", 600)
    with pytest.raises(InvalidToken):
        issuer.verify(other.issue(DOCTOR))


def test_tampered_payload_is_refused(issuer: TokenIssuer) -> None:
    header, payload, signature = issuer.issue(RESIDENT).split(".")
    claims = json.loads(_unb64url(payload))
    claims["role"] = "admin"
    forged = ".".join([header, _b64url(json.dumps(claims).encode()), signature])
    with pytest.raises(InvalidToken):
        issuer.verify(forged)


def test_tampered_signature_is_refused(issuer: TokenIssuer) -> None:
    header, payload, signature = issuer.issue(RESIDENT).split(".")
    raw = bytearray(_unb64url(signature))
    raw[0] ^= 1
    with pytest.raises(InvalidToken):
        issuer.verify(".".join([header, payload, _b64url(bytes(raw))]))


def test_unsigned_token_is_refused(issuer: TokenIssuer) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "x", "iat": now, "exp": now + 60, "role": "admin"}
    forged = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(InvalidToken):
        issuer.verify(forged)


@pytest.mark.parametrize(
    "changes",
    [{"role": "superuser"}, {"role": None}, {"sub": None}, {"exp": None}],
    ids=["unknown-role", "no-role", "no-sub", "no-exp"],
)
def test_token_with_bad_or_missing_claims_is_refused(
    key: Ed25519PrivateKey, issuer: TokenIssuer, changes: dict[str, object]
) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "x", "iat": now, "exp": now + 60, "role": "admin"}
    for name, value in changes.items():
        if value is None:
            del claims[name]
        else:
            claims[name] = value
    token = jwt.encode(claims, key, algorithm="EdDSA")
    with pytest.raises(InvalidToken):
        issuer.verify(token)


@pytest.mark.parametrize("garbage", ["", "not-a-token", "a.b.c"])
def test_garbage_is_refused(issuer: TokenIssuer, garbage: str) -> None:
    with pytest.raises(InvalidToken):
        issuer.verify(garbage)
