"""Signed FHIR resources: a JWS (EdDSA, Ed25519) over the canonical JSON of a resource.

A specialist's gateway signs the DiagnosticReport it sends back; the signature travels in a
Provenance (``Provenance.signature``) and the receiving gateway verifies it with the sender's
public key, published as a JWK whose ``kid`` is its RFC 7638 thumbprint.

What is signed is :func:`canonical_json`: the resource without ``id``, ``meta`` and ``text``,
serialized by RFC 8785 (JSON Canonicalization Scheme). Leaving out meta and the narrative is what
FHIR's signature canonicalization of JSON does (``http://hl7.org/fhir/canonicalization/json#static``);
the id goes too, because each gateway gives the resource its own id and version. Only the top
level is trimmed: a ``text`` further down (``CodeableConcept.text``, a contained resource's
narrative) is clinical content and stays signed. Every other element is signed as it
is, references included: verify the report as it arrived, before any reference is rewritten to
the receiving gateway's ids.

The JWS is compact, with the canonical JSON as its ordinary (attached, base64url) payload, so the
receiver can read exactly what was signed. Protected header: ``alg`` ``EdDSA``, ``kid``, and for a
Provenance signature ``sigT`` (JAdES' claimed signing time, UTC), so ``Signature.when`` is covered
by the signature too. Verification accepts ``EdDSA`` only — never ``none``, never an HMAC.

The signing key is not the bearer-token key (:mod:`security.tokens`): a report signature must not
be usable as a token, nor a token as a signature, and the report key's public half is handed to
every member of the consortium.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
SIG_FORMAT = "application/jose"
TARGET_FORMAT = "application/fhir+json"
AUTHOR_SIGNATURE = {
    "system": "urn:iso-astm:E1762-95:2013",
    "code": "1.2.840.10065.1.12.1.1",
    "display": "Author's Signature",
}
NOT_SIGNED = frozenset({"id", "meta", "text"})
"""Top-level elements left out of the signed content: they differ between gateways."""

_JWS = jwt.PyJWS(algorithms=[ALGORITHM])  # nothing but EdDSA is even registered
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_SIG_TIME = "%Y-%m-%dT%H:%M:%SZ"


class Reason(enum.StrEnum):
    MALFORMED = "malformed"
    ALGORITHM = "algorithm-refused"
    UNKNOWN_KEY = "unknown-kid"
    BAD_SIGNATURE = "bad-signature"
    CONTENT_DIFFERS = "content-differs"
    TIME_DIFFERS = "time-differs"


class SignatureInvalid(Exception):
    """The signature does not vouch for this resource; ``reason`` says why."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# -- canonical form ----------------------------------------------------------------------------


def canonical_json(resource: Mapping[str, Any]) -> bytes:
    """RFC 8785 bytes of ``resource`` less its top-level ``id``, ``meta`` and ``text``.

    ``resource`` is the JSON data model (``json.loads``, ``model_dump(mode="json")``). Numbers
    are IEEE doubles, as RFC 8785 says: ``1.50`` and ``1.5`` are the same, and an integer beyond
    2**53 - 1 cannot be signed (ValueError), nor NaN or infinity, nor a lone surrogate.
    """
    content = {name: value for name, value in resource.items() if name not in NOT_SIGNED}
    return rfc8785.dumps(content)


# -- JWS ---------------------------------------------------------------------------------------


def sign(
    resource: Mapping[str, Any],
    key: Ed25519PrivateKey,
    kid: str,
    *,
    signed_at: datetime | None = None,
) -> str:
    """A compact JWS whose payload is ``canonical_json(resource)``; ``signed_at`` becomes sigT."""
    if not kid:
        raise ValueError("a signature needs a key id (kid); use key_id(public_key)")
    headers: dict[str, Any] = {"typ": None, "kid": kid}  # typ None: no "typ" member at all
    if signed_at is not None:
        headers["sigT"] = _sig_time(signed_at)
    return _JWS.encode(canonical_json(resource), key, algorithm=ALGORITHM, headers=headers)


def verify(
    resource: Mapping[str, Any], jws: str, keys: Mapping[str, Ed25519PublicKey]
) -> dict[str, Any]:
    """Check ``jws`` was made by ``keys[kid]`` over this resource; return its protected header.

    Raises :class:`SignatureInvalid`. ``keys`` should hold only the keys of the member the
    resource is expected from (the Provenance's ``who``), not every key of the consortium.
    """
    if not isinstance(jws, str):
        raise SignatureInvalid(Reason.MALFORMED, "the JWS must be a string in compact form")
    try:
        header = _JWS.get_unverified_header(jws)
    except jwt.PyJWTError as exc:
        raise SignatureInvalid(Reason.MALFORMED, f"not a compact JWS ({exc})") from exc
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise SignatureInvalid(Reason.ALGORITHM, f"alg {alg!r} refused: only EdDSA is accepted")
    if "crit" in header or "b64" in header:
        # no critical extension is understood here, and the payload must be the attached form
        raise SignatureInvalid(Reason.MALFORMED, "JWS header has crit/b64, which are not accepted")
    if header.get("typ", "JOSE") != "JOSE":
        raise SignatureInvalid(
            Reason.MALFORMED, f"typ {header['typ']!r} is not a signed resource (JOSE or none)"
        )
    kid = header.get("kid")
    public_key = keys.get(kid) if isinstance(kid, str) else None
    if public_key is None:
        raise SignatureInvalid(Reason.UNKNOWN_KEY, f"no trusted key has kid {kid!r}")
    try:
        decoded = _JWS.decode_complete(jws, public_key, algorithms=[ALGORITHM])
    except jwt.InvalidSignatureError as exc:
        raise SignatureInvalid(Reason.BAD_SIGNATURE, f"not signed by key {kid}") from exc
    except jwt.PyJWTError as exc:
        raise SignatureInvalid(Reason.MALFORMED, f"not a compact JWS ({exc})") from exc
    try:
        expected = canonical_json(resource)
    except ValueError as exc:
        raise SignatureInvalid(
            Reason.CONTENT_DIFFERS, f"the resource has no canonical form: {exc}"
        ) from exc
    if decoded["payload"] != expected:
        raise SignatureInvalid(
            Reason.CONTENT_DIFFERS, "the resource differs from the content that was signed"
        )
    signed_header: dict[str, Any] = decoded["header"]
    return signed_header


# -- FHIR Signature ----------------------------------------------------------------------------


def provenance_signature(
    resource: Mapping[str, Any],
    key: Ed25519PrivateKey,
    kid: str,
    who_reference: str,
    when: datetime,
) -> dict[str, Any]:
    """An R4 ``Signature`` (for ``Provenance.signature``): the author's JWS over ``resource``.

    ``when`` must carry a time zone; it is kept to whole seconds, in its own offset, and signed
    as ``sigT`` (UTC).
    """
    if when.utcoffset() is None:
        raise ValueError("Signature.when is an instant: give the datetime a time zone")
    when = when.replace(microsecond=0)
    jws = sign(resource, key, kid, signed_at=when)
    return {
        "type": [dict(AUTHOR_SIGNATURE)],
        "when": when.isoformat(),
        "who": {"reference": who_reference},
        "targetFormat": TARGET_FORMAT,
        "sigFormat": SIG_FORMAT,
        "data": base64.b64encode(jws.encode("ascii")).decode("ascii"),
    }


def verify_signature(
    resource: Mapping[str, Any],
    signature: Mapping[str, Any],
    keys: Mapping[str, Ed25519PublicKey],
) -> dict[str, Any]:
    """Check a ``Signature`` made by :func:`provenance_signature`; return the JWS header.

    Besides :func:`verify`, the signed time (sigT) must be the Signature's ``when``.
    """
    if signature.get("sigFormat") != SIG_FORMAT:
        raise SignatureInvalid(
            Reason.MALFORMED, f"sigFormat {signature.get('sigFormat')!r} is not {SIG_FORMAT}"
        )
    if signature.get("targetFormat", TARGET_FORMAT) != TARGET_FORMAT:
        raise SignatureInvalid(
            Reason.MALFORMED, f"targetFormat {signature['targetFormat']!r} is not {TARGET_FORMAT}"
        )
    data = signature.get("data")
    try:
        if not isinstance(data, str):
            raise TypeError("Signature.data is missing")
        jws = base64.b64decode(data, validate=True).decode("ascii")
    except (TypeError, ValueError) as exc:  # binascii.Error and UnicodeDecodeError included
        raise SignatureInvalid(Reason.MALFORMED, "Signature.data is not base64 of a JWS") from exc
    header = verify(resource, jws, keys)
    when = _instant(signature.get("when"))
    signed_at = _instant(header.get("sigT"))
    if when is None or signed_at is None:
        raise SignatureInvalid(
            Reason.MALFORMED, "Signature.when and the JWS sigT must both be instants with a zone"
        )
    if when != signed_at:
        raise SignatureInvalid(
            Reason.TIME_DIFFERS,
            f"Signature.when {signature['when']} is not the signed time {header['sigT']}",
        )
    return header


def _sig_time(moment: datetime) -> str:
    if moment.utcoffset() is None:
        raise ValueError("a signing time needs a time zone")
    return moment.astimezone(UTC).strftime(_SIG_TIME)


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.utcoffset() is not None else None


# -- keys --------------------------------------------------------------------------------------


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 key in PEM file ``path``; made (mode 0600) if there is none yet.

    Several processes may start at once: the key is written to a private temporary file and
    linked into place, so a reader never sees a half-written file and no key is overwritten.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, path)  # fails if another process got there first: use theirs
        except FileExistsError:
            pass
        else:
            log.info("generated signing key", extra={"path": str(path), "kid": key_id(key)})
            return key
        finally:
            temporary.unlink(missing_ok=True)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise ValueError(f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return loaded


def public_jwk(public_key: Ed25519PublicKey, kid: str) -> dict[str, str]:
    """The public key as an RFC 8037 JWK, for the consortium directory."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(_raw(public_key)),
        "kid": kid,
        "use": "sig",
        "alg": ALGORITHM,
    }


def public_key_from_jwk(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    """The Ed25519 public key of an OKP JWK; ValueError names what is wrong with it."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError(f"JWK is kty {jwk.get('kty')!r} crv {jwk.get('crv')!r}, not OKP Ed25519")
    if "d" in jwk:
        raise ValueError("JWK holds a private key (d): publish and trust only the public half")
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", ALGORITHM) != ALGORITHM:
        raise ValueError(f"JWK is for use {jwk.get('use')!r} alg {jwk.get('alg')!r}, not EdDSA")
    raw = _unb64url(jwk.get("x"))
    if raw is None or len(raw) != 32:
        raise ValueError("JWK x is not the base64url of a 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key: its ``kid``."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    members = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(_raw(public))}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).digest()
    return _b64url(digest)


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64url(text: object) -> bytes | None:
    """Strict base64url without padding: None unless ``text`` is exactly an encoding of bytes."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        return None
    return raw if _b64url(raw) == text else None
