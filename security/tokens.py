"""Signed bearer tokens (JWT, EdDSA over Ed25519).

The signing key is generated into the data folder on first start (``keys/token-signing.pem``,
mode 0600) and never leaves it. Tokens carry the principal's role, organization and, for a
resident, their Patient id, so a request needs no database look-up to know who is asking.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.principal import Principal, Role

log = logging.getLogger(__name__)

KEY_FILE = "token-signing.pem"
ALGORITHM = "EdDSA"


class InvalidToken(Exception):
    """The token is missing, malformed, expired or not signed by us."""


def load_or_create_signing_key(keys_dir: Path) -> Ed25519PrivateKey:
    path = keys_dir / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SystemExit(f"yilian: {path} is not an Ed25519 private key")
        return key
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: two processes starting at once must not overwrite each other's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_signing_key(keys_dir)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    log.info("generated token signing key", extra={"path": str(path)})
    return key


class TokenIssuer:
    def __init__(self, key: Ed25519PrivateKey, issuer: str, ttl_seconds: int) -> None:
        self._key = key
        self._public = key.public_key()
        self.issuer = issuer
        self.ttl_seconds = ttl_seconds

    def issue(self, principal: Principal, scope: str = "") -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": principal.username,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
            "role": principal.role.value,
            "org": principal.organization,
            "patient": principal.patient_id,
            "practitioner": principal.practitioner_id,
        }
        if scope:
            claims["scope"] = scope
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
            role = Role(claims["role"])
        except (jwt.PyJWTError, KeyError, ValueError) as exc:
            raise InvalidToken(str(exc)) from exc
        return Principal(
            username=claims["sub"],
            role=role,
            organization=claims.get("org"),
            patient_id=claims.get("patient"),
            practitioner_id=claims.get("practitioner"),
        )
