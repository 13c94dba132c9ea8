"""The requesting doctor is told: two member gateways, the hospital accepts, rejects, reports;
at the township a Communication for the doctor is written with each change, read through the
notifications API, and pushed to the doctor's rest-hook Subscription over HTTPS."""

from __future__ import annotations

from typing import Any

import pytest

from records import store
from security.principal import SYSTEM
from teleconsult import lifecycle, notify, service
from tests.fhir_schema import assert_r4
from tests.teleconsult.conftest import Member
from tests.teleconsult.receiver import Receiver
from tests.teleconsult.test_exchange import (
    _accepted_request,
    _reject,
    _request,
    _trust,
    _write_report,
)


def _notifications(member: Member, ca: Any, user: str = "doctor.xingfu", **params: Any) -> Any:
    with member.api(ca) as api:
        listed = api.get("/api/notifications", params=params, headers=member.token(user))
    assert listed.status_code == 200, listed.text
    return listed.json()


def _communication(member: Member, ca: Any, cid: str) -> dict[str, Any]:
    with member.api(ca) as api:
        found = api.get(f"/fhir/Communication/{cid}", headers=member.token("doctor.xingfu"))
    assert found.status_code == 200, found.text
    body = dict(found.json())
    assert_r4(body)
    return body


def test_the_doctor_is_told_when_the_hospital_accepts_and_when_the_report_is_back(
    pair, consortium_ca
):
    township, hospital = pair
    _trust(township, hospital)
    key, there_id = _accepted_request(township, hospital, consortium_ca)
    task = township.task(key)
    accepted = [
        n for n in _notifications(township, consortium_ca)["items"] if n["code"] == "accepted"
    ]
    assert len(accepted) == 1
    [note] = accepted
    assert note["task"] == task["id"] and note["read"] is None
    assert note["text"] == "市第一人民医院已接受远程会诊请求。"
    assert note["text_en"] == "市第一人民医院 accepted the remote consultation request."
    body = _communication(township, consortium_ca, note["id"])
    assert body["status"] == "completed"
    assert body["recipient"] == [{"reference": "Practitioner/doctor-xingfu"}]
    assert body["sender"] == {"reference": "Organization/CITY-FIRST", "display": "市第一人民医院"}
    assert body["subject"] == {"reference": "Patient/demo-wang-xiuying"}
    assert body["about"] == [{"reference": f"Task/{task['id']}"}]
    assert body["priority"] == "urgent"
    assert "王秀英" not in str(body)  # the patient is a reference, not a name

    _write_report(hospital, there_id, consortium_ca)
    hospital.deliver()
    assert township.task(key)["status"] == "completed"
    unread = _notifications(township, consortium_ca, unread="true")["items"]
    assert unread[0]["code"] == "reported"  # newest first
    report_id = township.task(key)["output"][0]["valueReference"]["reference"].split("/")[1]
    assert unread[0]["report"] == report_id
    assert "报告已返回" in unread[0]["text"]
    _communication(township, consortium_ca, unread[0]["id"])

    with township.api(consortium_ca) as api:
        doctor = township.token("doctor.xingfu")
        for item in unread:
            assert api.post(f"/api/notifications/{item['id']}/read", headers=doctor).is_success
    assert _notifications(township, consortium_ca, unread="true")["total"] == 0
    # the resident and the hospital's specialist see none of it
    assert _notifications(township, consortium_ca, "resident.wang")["total"] == 0
    with hospital.api(consortium_ca) as api:
        theirs = api.get("/api/notifications", headers=hospital.token("specialist.city"))
        assert theirs.json()["total"] == 0  # the hospital's Task names no Practitioner


def test_a_rejection_tells_the_doctor_whether_the_request_went_elsewhere(pair, consortium_ca):
    township, hospital = pair
    rerouted = _request(township, consortium_ca, kind="ecg", observations=["demo-wang-xiuying-bp1"])
    township.deliver()
    _reject(hospital, rerouted["task"]["key"], consortium_ca, "本院心电诊断医师外出")
    stuck = _request(township, consortium_ca)  # only City First consults
    township.deliver()
    _reject(hospital, stuck["task"]["key"], consortium_ca, "非本院专科范围")
    items = _notifications(township, consortium_ca)["items"]
    by_task = {(n["task"], n["code"]): n for n in items}
    moved = by_task[(rerouted["task"]["id"], "rerouted")]
    assert moved["text"].startswith("市第一人民医院未接受远程心电诊断请求，已转至")
    assert "本院心电诊断医师外出" in moved["text"]
    left = by_task[(stuck["task"]["id"], "rejected")]
    assert left["text"].startswith("市第一人民医院未接受远程会诊请求，且无其他医院可接收")
    assert "非本院专科范围" in left["text"]
    assert "please decide" in left["text_en"]
    for note in (moved, left):
        _communication(township, consortium_ca, note["id"])


def test_the_doctors_subscription_is_pushed_each_notification(pair, consortium_ca):
    township, hospital = pair
    with Receiver(consortium_ca) as receiver:
        with township.api(consortium_ca) as api:
            made = api.post(
                "/fhir/Subscription",
                json={
                    "resourceType": "Subscription",
                    "status": "requested",
                    "reason": "李医生的远程诊断通知",
                    "criteria": f"Communication?category={notify.CATEGORY}|",
                    "channel": {
                        "type": "rest-hook",
                        "endpoint": receiver.url,
                        "payload": "application/fhir+json",
                        "header": ["Authorization: Bearer his-token"],
                    },
                },
                headers=township.token("doctor.xingfu"),
            )
        assert made.status_code == 201, made.text
        assert made.json()["status"] == "active"
        assert_r4(made.json())
        key, _ = _accepted_request(township, hospital, consortium_ca)
        township.deliver()  # the rest-hook rows go with the township's other deliveries
    pushed = [c for c in receiver.calls if c.path.startswith("/hook/Communication/")]
    codes = [c.json()["category"][0]["coding"][0]["code"] for c in pushed]
    assert "accepted" in codes
    for call in pushed:
        assert call.method == "PUT"
        assert call.headers["authorization"] == "Bearer his-token"
        assert_r4(call.json())
    assert all(e.status == "delivered" for e in township.outbox() if e.channel == "rest-hook")
    assert township.task(key)["status"] == "in-progress"  # accepted, then started


def _task(status: str, **more: Any) -> dict[str, Any]:
    return {"status": status, **more}


@pytest.mark.parametrize(
    ("before", "task", "what", "code"),
    [
        ("requested", _task("received"), "status", "received"),
        ("received", _task("accepted"), "status", "accepted"),
        ("accepted", _task("in-progress"), "status", None),
        ("in-progress", _task("on-hold"), "status", "on-hold"),
        ("on-hold", _task("in-progress"), "status", None),
        ("received", _task("rejected"), "status", "rejected"),
        (
            "received",
            _task(
                "requested", extension=[{"url": service.PASSED_OVER, "valueString": "CITY_FIRST"}]
            ),
            "status",
            "rerouted",
        ),
        ("draft", _task("requested"), "status", None),
        ("requested", _task("failed"), "status", "undeliverable"),
        ("requested", _task("failed"), "delivery-failed", "undeliverable"),
        ("accepted", _task("failed"), "status", "failed"),
        ("accepted", _task("cancelled"), "cancel", "cancelled"),
        ("in-progress", _task("completed"), "report", "reported"),
        ("received", _task("received"), "escalated", "escalated"),
        ("accepted", _task("accepted"), "status", None),
    ],
)
def test_which_changes_the_doctor_is_told_of(
    before: str, task: dict[str, Any], what: str, code: str | None
) -> None:
    assert notify.code_for(before, task, what) == code


def test_every_status_told_of_is_one_the_lifecycle_knows() -> None:
    assert set(notify._BY_STATUS) <= lifecycle.STATUSES


def test_a_request_that_could_not_be_delivered_and_an_escalation_are_told(demo):
    """What the delivery workers and the deadline sweep call (written at one gateway)."""
    deadline = "2026-11-23T12:00:00+08:00"
    task_body = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "priority": "stat",
        "code": {"coding": [{"system": "urn:yilian:teleconsult-kind", "code": "ecg"}]},
        "for": {"reference": "Patient/demo-wang-xiuying"},
        "requester": {"reference": "Practitioner/doctor-xingfu"},
        "owner": {"reference": "Organization/CITY-FIRST"},
        "restriction": {"period": {"end": deadline}},
        "statusReason": {"text": "could not be delivered: the member answered 400: 王秀英 ..."},
    }
    missed = {"url": service.PASSED_OVER, "valueString": "CITY_FIRST"}
    rerouted = {
        **task_body,
        "owner": {"reference": "Organization/CITY-CENTRAL"},
        "extension": [missed],
    }
    stayed = {**task_body, "extension": [{"url": notify.ESCALATED, "valueString": deadline}]}
    doctor = _doctor(demo)

    def work(conn):  # type: ignore[no-untyped-def]
        def told(rid, body, before, what, **more):  # type: ignore[no-untyped-def]
            task = store.write(conn, "Task", rid, body, "PUT")
            return notify.task_changed(demo.records, conn, task, before, what, **more)

        return (
            told(
                "t-undelivered", {**task_body, "status": "failed"}, "requested", "delivery-failed"
            ),
            told("t-elsewhere", rerouted, "received", "escalated"),
            told("t-nowhere", {**stayed, "status": "received"}, "received", "escalated"),
            told("t-mine", {**task_body, "status": "cancelled"}, "accepted", "cancel", by=doctor),
        ), []

    undelivered, elsewhere, nowhere, by_doctor = demo.records.run(SYSTEM, "test", work)
    assert by_doctor is None  # the doctor cancelled it: nothing to tell them
    for stored, code in (
        (undelivered, "undeliverable"),
        (elsewhere, "escalated"),
        (nowhere, "escalated"),
    ):
        body = stored.json()
        assert_r4(body)
        assert body["category"][0]["coding"][0]["code"] == code
        assert "sender" not in body
        assert "王秀英" not in str(body)  # the delivery's reason stays with the operator
        assert body["priority"] == "stat"
    lines = [s.json()["payload"][0]["contentString"] for s in (undelivered, elsewhere, nowhere)]
    assert lines == [
        "远程心电诊断请求未能送达市第一人民医院，管理员可查看原因（yilian outbox）。",
        "市第一人民医院未在时限内接受远程心电诊断请求，已转至市中心医院。",
        "市第一人民医院未在时限内接受远程心电诊断请求，且无其他医院可接收，请决定下一步。",
    ]


def test_the_escalated_extension_is_the_deadline_sweeps() -> None:
    from teleconsult import deadlines

    assert notify.ESCALATED == deadlines.ESCALATED


def _doctor(ctx: Any) -> Any:
    from records import users

    with ctx.engine.begin() as conn:
        user = users.get(conn, "doctor.xingfu")
    assert user is not None
    return user.principal()
