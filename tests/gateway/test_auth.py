"""POST /auth/token (password and client_credentials grants) and the `yilian` operator commands."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from gateway.cli import main
from gateway.context import Context
from gateway.demo import DEMO_PASSWORD, USERS
from gateway.settings import Settings
from records import users
from records.fhirtypes import organization_id
from records.schema import audit_record
from security.principal import Role

XINGFU_THC = organization_id("XINGFU_THC")
CLIENT_ID, CLIENT_SECRET = "lab-analyzer", "secret-123456"


def _logins(ctx: Context, username: str) -> list[tuple[str, str | None]]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(audit_record.c.outcome, audit_record.c.detail)
            .where(audit_record.c.actor == username, audit_record.c.action == "login")
            .order_by(audit_record.c.seq)
        ).all()
    return [(r.outcome, r.detail) for r in rows]


def _password_grant(client, username: str, password: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/auth/token",
        data={"grant_type": "password", "username": username, "password": password},
    )


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


@pytest.fixture
def lab_client(demo: Context) -> Context:
    with demo.engine.begin() as conn:
        users.add(conn, CLIENT_ID, CLIENT_SECRET, Role.TOWNSHIP_DOCTOR, "XINGFU_THC", kind="client")
    return demo


# -- password grant -------------------------------------------------------------------------------


def test_password_grant_gives_a_bearer_token_for_the_fhir_api(client, demo):
    response = _password_grant(client, "doctor.xingfu", DEMO_PASSWORD)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["role"] == "township_doctor"
    assert body["organization"] == XINGFU_THC
    assert body["expires_in"] == demo.tokens.ttl_seconds > 0
    assert demo.tokens.verify(body["access_token"]).username == "doctor.xingfu"

    auth = {"Authorization": f"Bearer {body['access_token']}"}
    patients = client.get("/fhir/Patient", headers=auth)
    assert patients.status_code == 200, patients.text
    assert patients.json()["total"] == 3  # the three residents of his clinic
    assert _logins(demo, "doctor.xingfu") == [("success", "password")]


def test_wrong_password_is_invalid_grant_and_audited(client, demo):
    response = _password_grant(client, "doctor.xingfu", "not-the-password")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_grant"
    assert "access_token" not in body
    logins = _logins(demo, "doctor.xingfu")
    assert len(logins) == 1 and logins[0][0] == "refused"
    # an unknown user gets the same answer and is audited too
    unknown = _password_grant(client, "doctor.nobody", "whatever-123")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_grant"
    assert [o for o, _ in _logins(demo, "doctor.nobody")] == ["refused"]
    # and no success was recorded for either
    assert all(o != "success" for o, _ in _logins(demo, "doctor.xingfu"))


def test_refused_login_is_visible_to_the_admin_as_an_audit_event(client, demo, as_user):
    _password_grant(client, "resident.wang", "guess-guess")
    bundle = client.get(
        "/fhir/AuditEvent", params={"action": "login", "outcome": "4"}, headers=as_user("admin")
    ).json()
    assert bundle["total"] == 1
    event = bundle["entry"][0]["resource"]
    assert event["agent"][0]["who"]["identifier"]["value"] == "resident.wang"
    assert event["outcome"] == "4"
    assert event["type"]["code"] == "110114"


def test_token_request_errors(client, demo):
    unsupported = client.post(
        "/auth/token", data={"grant_type": "authorization_code", "code": "abc"}
    )
    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == "unsupported_grant_type"
    missing = client.post("/auth/token", data={"grant_type": "password", "username": "admin"})
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"
    nothing = client.post("/auth/token", data={})
    assert nothing.status_code == 400
    assert nothing.json()["error"] == "unsupported_grant_type"


# -- client_credentials ---------------------------------------------------------------------------


def test_client_credentials_with_http_basic(client, lab_client):
    response = client.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        headers=_basic(CLIENT_ID, CLIENT_SECRET),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["role"] == "township_doctor"
    principal = lab_client.tokens.verify(body["access_token"])
    assert principal.username == CLIENT_ID and principal.organization == XINGFU_THC
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.get("/fhir/Patient/demo-wang-xiuying", headers=auth).status_code == 200
    assert _logins(lab_client, CLIENT_ID) == [("success", "client_credentials")]


def test_client_credentials_in_the_form(client, lab_client):
    response = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
    )
    assert response.status_code == 200, response.text
    assert lab_client.tokens.verify(response.json()["access_token"]).username == CLIENT_ID


def test_client_with_a_wrong_secret_is_invalid_client(client, lab_client):
    response = client.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        headers=_basic(CLIENT_ID, "secret-wrong"),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")
    assert [o for o, _ in _logins(lab_client, CLIENT_ID)] == ["refused"]


def test_a_person_cannot_use_client_credentials(client, demo):
    response = client.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        headers=_basic("doctor.xingfu", DEMO_PASSWORD),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert "access_token" not in response.json()
    assert [o for o, _ in _logins(demo, "doctor.xingfu")] == ["refused"]


def test_a_client_cannot_use_the_password_grant(client, lab_client):
    response = _password_grant(client, CLIENT_ID, CLIENT_SECRET)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert "access_token" not in response.json()


# -- token integrity ------------------------------------------------------------------------------


def test_tampered_tokens_are_rejected(client, demo):
    token = _password_grant(client, "resident.wang", DEMO_PASSWORD).json()["access_token"]
    own = "/fhir/Patient/demo-wang-xiuying"
    assert client.get(own, headers={"Authorization": f"Bearer {token}"}).status_code == 200

    header, payload, signature = token.split(".")
    flipped = "B" if signature[10] == "A" else "A"
    bad_signature = f"{header}.{payload}.{signature[:10]}{flipped}{signature[11:]}"
    rejected = client.get(own, headers={"Authorization": f"Bearer {bad_signature}"})
    assert rejected.status_code == 401
    assert rejected.json()["resourceType"] == "OperationOutcome"

    # a resident promoting herself to admin by rewriting the claims keeps the old signature
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "system"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    escalated = client.get(
        "/fhir/Patient/demo-zhang-guilan",
        headers={"Authorization": f"Bearer {header}.{forged}.{signature}"},
    )
    assert escalated.status_code == 401


# -- the yilian command ---------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run `yilian ...` in-process against a data dir and SQLite database of its own."""
    db_file = tmp_path / "cli.db"
    monkeypatch.delenv("YILIAN_CONFIG", raising=False)
    monkeypatch.setenv("YILIAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("YILIAN_DATABASE_URL", f"sqlite:///{db_file}")
    runner = CliRunner()

    def run(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(main, list(args), catch_exceptions=False)

    run.db_file = db_file  # type: ignore[attr-defined]
    run.settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{db_file}")  # type: ignore[attr-defined]
    return run


def test_cli_demo_prints_the_fixed_user_names(cli):
    result = cli("demo")
    assert result.exit_code == 0, result.output
    for name in ("doctor.xingfu", "specialist.city", "insurer.county", "admin", "resident.wang"):
        assert name in result.output
    assert DEMO_PASSWORD in result.output
    assert {u.username for u in USERS} <= set(result.output.split())
    again = cli("demo")  # loading twice changes nothing and still succeeds
    assert again.exit_code == 0, again.output


def test_cli_users_add_then_token(cli):
    added = cli(
        "users",
        "add",
        "nurse.a",
        "--role",
        "township_doctor",
        "--org",
        "XINGFU_THC",
        "--password",
        "pass-12345",
    )
    assert added.exit_code == 0, added.output
    assert "pass-12345" not in added.output  # a given password is not echoed

    result = cli("token", "--user", "nurse.a")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "nurse.a"
    assert claims["role"] == "township_doctor"
    # the token is signed with the data dir's key, and the login was audited
    ctx = Context.build(cli.settings)
    try:
        assert ctx.tokens.verify(token).role == Role.TOWNSHIP_DOCTOR
        assert _logins(ctx, "nurse.a") == [("success", "yilian token")]
        with ctx.engine.connect() as conn:
            assert users.authenticate(conn, "nurse.a", "pass-12345", kind="person") is not None
    finally:
        ctx.close()


def test_cli_token_for_an_unknown_user_fails(cli):
    result = cli("token", "--user", "nobody")
    assert result.exit_code != 0
    assert "nobody" in result.output
    assert result.stdout.count(".") < 2  # no token printed


def test_cli_audit_verify_detects_an_altered_record(cli):
    assert cli("demo").exit_code == 0
    assert (
        cli(
            "users",
            "add",
            "nurse.a",
            "--role",
            "township_doctor",
            "--org",
            "XINGFU_THC",
            "--password",
            "pass-12345",
        ).exit_code
        == 0
    )
    for _ in range(3):
        assert cli("token", "--user", "nurse.a").exit_code == 0

    intact = cli("audit", "verify")
    assert intact.exit_code == 0, intact.output
    assert "intact" in intact.output

    with sqlite3.connect(cli.db_file) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM audit_record ORDER BY seq")]
        assert len(seqs) >= 4
        target = seqs[2]
        conn.execute("UPDATE audit_record SET actor = 'mallory' WHERE seq = ?", (target,))
    conn.close()

    broken = cli("audit", "verify")
    assert broken.exit_code == 1, broken.output
    assert f"record {target}" in broken.output
    assert "intact" not in broken.output
