"""The whole foundation as a new user meets it: real `yilian` processes, real HTTP, real database.

serve, demo, get a token, create a Patient with an invalid resident identity number (refused,
clear message), create a valid one, search it by identifier and by Chinese name, read it as
another resident (404), verify the audit chain, alter one audit row in the database, verify
again (fails and names the row), and stop the server with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from gateway.demo import DEMO_PASSWORD, resident_id
from records.identity import RESIDENT_ID_SYSTEM
from tests.fhir_schema import assert_r4

pytestmark = pytest.mark.slow
YILIAN = [sys.executable, "-m", "gateway.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path, fresh_database: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("YILIAN_")},
        "YILIAN_DATA_DIR": str(tmp_path / "var"),
        "YILIAN_DATABASE_URL": fresh_database,
        "YILIAN_HTTP_PORT": str(_free_port()),
        "YILIAN_MLLP_PORT": str(_free_port()),
    }


def _yilian(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*YILIAN, *args], env=env, capture_output=True, text=True, timeout=120)


def _wait_ready(base: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"yilian serve exited early: {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("yilian serve did not become ready in 60 s")


def _token(base: str, username: str) -> dict[str, str]:
    response = httpx.post(
        f"{base}/auth/token",
        data={"grant_type": "password", "username": username, "password": DEMO_PASSWORD},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_new_user_story(env: dict[str, str], tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{env['YILIAN_HTTP_PORT']}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [*YILIAN, "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True
        )
    try:
        _wait_ready(base, proc)
        demo = _yilian(env, "demo")  # after serve, on the same data dir
        assert demo.returncode == 0, demo.stderr
        for name in (
            "doctor.xingfu",
            "specialist.city",
            "insurer.county",
            "admin",
            "resident.wang",
        ):
            assert name in demo.stdout

        doctor = _token(base, "doctor.xingfu")
        fhir = {**doctor, "Content-Type": "application/fhir+json"}
        number = resident_id("411325", "1983-06-18", "244")  # female: even sequence
        bad = number[:17] + ("0" if number[17] != "0" else "1")
        patient = {
            "resourceType": "Patient",
            "gender": "female",
            "birthDate": "1983-06-18",
            "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": bad}],
            "name": [{"text": "周晓燕", "family": "周", "given": ["晓燕"]}],
            "address": [{"text": "幸福镇桃园村四组"}],
        }
        refused = httpx.post(f"{base}/fhir/Patient", json=patient, headers=fhir)
        assert refused.status_code == 422
        outcome = refused.json()
        assert_r4(outcome)
        assert outcome["issue"][0]["expression"] == ["Patient.identifier[0].value"]
        assert "check character" in outcome["issue"][0]["diagnostics"]

        patient["identifier"][0]["value"] = number
        created = httpx.post(f"{base}/fhir/Patient", json=patient, headers=fhir)
        assert created.status_code == 201, created.text
        assert_r4(created.json())
        pid = created.json()["id"]

        by_ident = httpx.get(
            f"{base}/fhir/Patient",
            headers=doctor,
            params={"identifier": f"{RESIDENT_ID_SYSTEM}|{number}"},
        ).json()
        assert [e["resource"]["id"] for e in by_ident["entry"]] == [pid]
        by_name = httpx.get(f"{base}/fhir/Patient", headers=doctor, params={"name": "周晓燕"})
        assert (
            "周晓燕".encode() in by_name.content and "幸福镇桃园村四组".encode() in by_name.content
        )
        assert [e["resource"]["id"] for e in by_name.json()["entry"]] == [pid]

        other = httpx.get(f"{base}/fhir/Patient/{pid}", headers=_token(base, "resident.wang"))
        assert other.status_code == 404

        verified = _yilian(env, "audit", "verify")
        assert verified.returncode == 0, verified.stderr
        assert "intact" in verified.stdout

        engine = create_engine(env["YILIAN_DATABASE_URL"])
        with engine.begin() as conn:
            seq = conn.execute(
                text(
                    "SELECT min(seq) FROM audit_record"
                    " WHERE action = 'create' AND outcome = 'success'"
                )
            ).scalar_one()
            conn.execute(
                text("UPDATE audit_record SET actor = 'someone.else' WHERE seq = :s"), {"s": seq}
            )
        engine.dispose()
        broken = _yilian(env, "audit", "verify")
        assert broken.returncode == 1
        assert f"record {seq}" in broken.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, "yilian serve did not stop cleanly on SIGTERM"
    logged = log_path.read_text()
    assert "gateway stopped" in logged
    # identifiers and names of residents never reach the log
    for secret in ("周晓燕", number, "幸福镇桃园村四组", "王秀英"):
        assert secret not in logged
    for line in logged.splitlines():
        if line.startswith("{"):
            json.loads(line)  # structured logs: every line is one JSON object
