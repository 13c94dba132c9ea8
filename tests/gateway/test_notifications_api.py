"""The notifications API (GET /api/notifications, POST /api/notifications/{id}/read) and the
rules that keep a notification its recipient's: through /api and through /fhir alike."""

from __future__ import annotations

from typing import Any

from records import users
from security.principal import Role
from tests.conftest import stored_notification as notification
from tests.fhir_schema import assert_r4

PATIENT = "demo-wang-xiuying"


def _other_doctor(ctx: Any) -> None:
    with ctx.engine.begin() as conn:
        users.add(
            conn,
            "doctor.other",
            "password-of-other",
            Role.TOWNSHIP_DOCTOR,
            "XINGFU_THC",
            practitioner_id="doctor-other",
        )


def test_a_doctor_reads_their_notifications_newest_first_and_marks_one_read(client, as_user, demo):
    older = notification(demo, "Practitioner/doctor-xingfu", "一", "2026-11-23T09:00:00+08:00")
    newer = notification(demo, "Practitioner/doctor-xingfu", "二", "2026-11-23T10:00:00+08:00")
    doctor = as_user("doctor.xingfu")
    listed = client.get("/api/notifications", headers=doctor)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["total"] == 2
    assert [n["id"] for n in body["items"]] == [newer, older]
    first = body["items"][0]
    assert first["text"] == "二" and first["text_en"] == "二 (en)"
    assert first["read"] is None and first["task"] == "t1"
    assert first["patient"] == f"Patient/{PATIENT}" and first["sender"] == "市第一人民医院"
    one = client.get("/api/notifications?_count=1", headers=doctor).json()
    assert [n["id"] for n in one["items"]] == [newer] and one["total"] == 2

    read = client.post(f"/api/notifications/{newer}/read", headers=doctor)
    assert read.status_code == 200, read.text
    when = read.json()["read"]
    assert when
    again = client.post(f"/api/notifications/{newer}/read", headers=doctor)
    assert again.json()["read"] == when  # read once
    stored = client.get(f"/fhir/Communication/{newer}", headers=doctor).json()
    assert stored["received"] == when and stored["meta"]["versionId"] == "2"
    assert_r4(stored)
    unread = client.get("/api/notifications?unread=true", headers=doctor).json()
    assert [n["id"] for n in unread["items"]] == [older]


def test_nobody_else_reads_a_doctors_notifications(client, as_user, demo):
    _other_doctor(demo)
    mine = notification(demo, "Practitioner/doctor-xingfu", "给李医生", "2026-11-23T09:00:00+08:00")
    for user in ("doctor.other", "resident.wang", "specialist.city"):
        headers = as_user(user)
        assert client.get("/api/notifications", headers=headers).json()["total"] == 0, user
        assert client.post(f"/api/notifications/{mine}/read", headers=headers).status_code == 404
        assert client.get(f"/fhir/Communication/{mine}", headers=headers).status_code == 404
        found = client.get("/fhir/Communication", headers=headers).json()
        assert found["total"] == 0, user
        everything = client.get(f"/fhir/Patient/{PATIENT}/$everything", headers=headers)
        if everything.status_code == 200:  # a resident's own record: not the doctor's mail
            assert all(
                e["resource"]["resourceType"] != "Communication" for e in everything.json()["entry"]
            )
    for user in ("admin", "insurer.county"):
        assert client.get("/api/notifications", headers=as_user(user)).status_code == 403
    doctor = as_user("doctor.xingfu")
    assert client.get(f"/fhir/Communication/{mine}", headers=doctor).status_code == 200


def test_a_resident_reads_the_notifications_addressed_to_them(client, as_user, demo):
    theirs = notification(demo, f"Patient/{PATIENT}", "报告已返回", "2026-11-23T09:00:00+08:00")
    notification(demo, "Practitioner/doctor-xingfu", "给医生", "2026-11-23T09:00:00+08:00")
    resident = as_user("resident.wang")
    listed = client.get("/api/notifications", headers=resident).json()
    assert [n["id"] for n in listed["items"]] == [theirs]
    assert client.post(f"/api/notifications/{theirs}/read", headers=resident).status_code == 200
    other = as_user("resident.zhang")
    assert client.get("/api/notifications", headers=other).json()["total"] == 0


def test_the_recipient_changes_nothing_but_received(client, as_user, demo):
    mine = notification(demo, "Practitioner/doctor-xingfu", "一", "2026-11-23T09:00:00+08:00")
    doctor = as_user("doctor.xingfu")
    url = f"/fhir/Communication/{mine}"
    body = client.get(url, headers=doctor).json()
    edited = {**body, "payload": [{"contentString": "改过的"}]}
    refused = client.put(url, json=edited, headers=doctor)
    assert refused.status_code == 422, refused.text
    assert refused.json()["issue"][0]["expression"] == ["Communication.payload"]
    marked = client.put(url, json={**body, "received": "2026-11-23T11:00:00+08:00"}, headers=doctor)
    assert marked.status_code == 200, marked.text
    later = {**marked.json(), "received": "2026-11-24T11:00:00+08:00"}
    assert client.put(url, json=later, headers=doctor).status_code == 422
    fresh = {k: v for k, v in body.items() if k not in ("id", "meta", "received")}
    made = client.post("/fhir/Communication", json=fresh, headers=doctor)
    assert made.status_code == 403
    assert client.delete(url, headers=doctor).status_code == 403
