"""People and system clients who may obtain a token. Passwords are hashed by ``security``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, insert, select, update

from records import fhirdates
from records.errors import Conflict, Invalid
from records.fhirtypes import check_id, organization_id
from records.schema import app_user
from security.passwords import hash_password, verify_password
from security.principal import Principal, Role

HUMAN_ROLES = {r for r in Role if r != Role.SYSTEM}


@dataclass(frozen=True)
class User:
    username: str
    kind: str
    role: Role
    organization: str
    patient_id: str | None
    practitioner_id: str | None
    display: str | None
    active: bool

    def principal(self, source: str | None = None) -> Principal:
        return Principal(
            self.username,
            self.role,
            self.organization,
            self.patient_id,
            self.practitioner_id,
            source,
        )


def add(
    conn: Connection,
    username: str,
    password: str,
    role: Role,
    organization: str,
    *,
    kind: str = "person",
    patient_id: str | None = None,
    practitioner_id: str | None = None,
    display: str | None = None,
    replace: bool = False,
) -> User:
    organization = organization_id(organization)  # accepts the code (XINGFU_THC) or the id
    check_id(organization)
    if role not in HUMAN_ROLES:
        raise Invalid(f"role must be one of {', '.join(sorted(HUMAN_ROLES))}")
    if role == Role.RESIDENT and not patient_id:
        raise Invalid("a resident user needs the id of their own Patient")
    if len(password) < 8:
        raise Invalid("the password must have at least 8 characters")
    values = {
        "kind": kind,
        "role": role.value,
        "organization": organization,
        "patient_id": patient_id,
        "practitioner_id": practitioner_id,
        "display": display,
        "password_hash": hash_password(password),
        "active": True,
    }
    existing = get(conn, username)
    if existing and not replace:
        raise Conflict(f"user {username} already exists")
    if existing:
        conn.execute(update(app_user).where(app_user.c.username == username).values(**values))
    else:
        conn.execute(insert(app_user).values(username=username, created=fhirdates.now(), **values))
    found = get(conn, username)
    assert found is not None
    return found


def get(conn: Connection, username: str) -> User | None:
    row = conn.execute(select(app_user).where(app_user.c.username == username)).first()
    if row is None:
        return None
    return User(
        row.username,
        row.kind,
        Role(row.role),
        row.organization,
        row.patient_id,
        row.practitioner_id,
        row.display,
        row.active,
    )


def authenticate(conn: Connection, username: str, password: str, *, kind: str) -> User | None:
    row = conn.execute(select(app_user).where(app_user.c.username == username)).first()
    if row is None or not row.active or row.kind != kind:
        verify_password(password, _DUMMY_HASH)  # same cost whether or not the user exists
        return None
    if not verify_password(password, row.password_hash):
        return None
    return get(conn, username)


def all_users(conn: Connection) -> list[User]:
    names = [r[0] for r in conn.execute(select(app_user.c.username).order_by(app_user.c.username))]
    return [u for u in (get(conn, n) for n in names) if u]


_DUMMY_HASH = hash_password("not-a-real-password")
