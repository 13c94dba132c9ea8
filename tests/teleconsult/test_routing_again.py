"""A request is routed again when a draft is submitted, when a doctor sends a declined one again,
and when its deadline passes with no specialist having accepted it (the escalation sweep)."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from teleconsult.deadlines import ESCALATED, Deadlines
from teleconsult.routing import RoutingRules
from teleconsult.service import PASSED_OVER, extension
from tests.teleconsult.conftest import Member
from tests.teleconsult.test_exchange import MONDAY_10, PATIENT, _fix_clock, _reject, _request

ECG = {"kind": "ecg", "observations": [f"{PATIENT}-bp1"]}  # City Central reads ECGs too
ONLY_CITY_FIRST = """
[[rule]]
name = "City First only"
kind = ["imaging", "ecg", "consultation"]
to = ["CITY_FIRST"]
"""


def _op(member: Member, ca: Any, task_id: str, op: str, user: str) -> Any:
    with member.api(ca) as api:
        return api.post(f"/fhir/Task/{task_id}/${op}", headers=member.token(user))


def _service_request(member: Member, task: dict[str, Any]) -> dict[str, Any]:
    from records import store

    with member.ctx.engine.connect() as conn:
        return store.read(conn, "ServiceRequest", task["focus"]["reference"].split("/")[1]).json()


def test_a_submitted_draft_is_routed_and_goes_out(pair, consortium_ca):
    township, hospital = pair
    made = _request(township, consortium_ca, draft=True)
    key, task_id = made["task"]["key"], made["task"]["id"]
    assert township.task(key)["status"] == "draft"
    assert township.outbox() == []
    submitted = _op(township, consortium_ca, task_id, "submit", "doctor.xingfu")
    assert submitted.status_code == 200, submitted.text
    assert submitted.json()["status"] == "requested"
    assert _service_request(township, township.task(key))["status"] == "active"
    assert [e.topic for e in township.outbox()] == ["request"]
    township.deliver()
    assert hospital.task(key)["status"] == "received"
    assert township.task(key)["status"] == "received"
    assert _told(township, consortium_ca) == ["received"]  # not of the doctor's own submit


def test_a_declined_request_nobody_else_takes_is_owned_by_no_one_and_cannot_be_resent(
    pair, consortium_ca
):
    township, hospital = pair
    key = _request(township, consortium_ca)["task"]["key"]
    township.ctx.teleconsult.rules = RoutingRules.parse(ONLY_CITY_FIRST)
    township.deliver()
    _reject(hospital, key, consortium_ca, "本院设备检修")
    task = township.task(key)
    assert task["status"] == "rejected" and "owner" not in task
    assert extension(task, PASSED_OVER) == "CITY_FIRST"
    again = _op(township, consortium_ca, task["id"], "submit", "doctor.xingfu")
    assert again.status_code == 422, again.text
    assert "no hospital can take this request" in again.json()["issue"][0]["diagnostics"]
    assert township.task(key)["status"] == "rejected"


def test_a_request_sent_again_after_a_rejection_goes_to_another_hospital(pair, consortium_ca):
    township, hospital = pair
    key = _request(township, consortium_ca, **ECG)["task"]["key"]
    township.ctx.teleconsult.rules = RoutingRules.parse(ONLY_CITY_FIRST)
    township.deliver()
    _reject(hospital, key, consortium_ca, "本院设备检修")
    # the operator adds City Central to the rules; the doctor sends the request again
    _fix_clock(township)
    task = township.task(key)
    resent = _op(township, consortium_ca, task["id"], "submit", "doctor.xingfu")
    assert resent.status_code == 200, resent.text
    task = township.task(key)
    assert task["status"] == "requested"
    assert task["owner"] == {"reference": "Organization/CITY-CENTRAL"}
    waiting = [e for e in township.outbox() if e.status == "pending"]
    assert [(e.topic, e.destination) for e in waiting] == [("request", "CITY-CENTRAL-fhir")]


def test_rerouting_keeps_the_requests_specialty(pair, consortium_ca):
    township, hospital = pair
    key = _request(township, consortium_ca, specialty="394579002", **ECG)["task"]["key"]
    task = township.task(key)
    coding = _service_request(township, task)["performerType"]["coding"]
    assert coding == [{"system": "http://snomed.info/sct", "code": "394579002"}]
    with township.ctx.engine.connect() as conn:
        request = township.ctx.teleconsult.route_request(conn, task)
    assert request.specialty == "394579002" and request.kind == "ecg"
    township.deliver()
    _reject(hospital, key, consortium_ca, "非本院专科范围")
    moved = township.task(key)
    assert moved["owner"] == {"reference": "Organization/CITY-CENTRAL"}
    with township.ctx.engine.connect() as conn:
        again = township.ctx.teleconsult.route_request(conn, moved)
    assert again.specialty == "394579002" and again.exclude == frozenset({"CITY_FIRST"})


def _told(member: Member, ca: Any) -> list[str]:
    """The codes of the requesting doctor's notifications, oldest first."""
    with member.api(ca) as api:
        listed = api.get("/api/notifications", headers=member.token("doctor.xingfu"))
    assert listed.status_code == 200, listed.text
    return [n["code"] for n in reversed(listed.json()["items"])]


def _late(township: Member, hours: int = 3) -> None:
    township.ctx.teleconsult.clock = lambda: (MONDAY_10 + timedelta(hours=hours)).astimezone(UTC)


def test_a_missed_deadline_sends_the_request_elsewhere_and_withdraws_it(pair, consortium_ca):
    township, hospital = pair
    key = _request(township, consortium_ca, **ECG)["task"]["key"]  # urgent: two hours
    township.deliver()
    assert hospital.task(key)["status"] == "received"
    sweep = Deadlines(township.ctx.teleconsult)
    assert sweep.sweep() == []  # not late yet
    _late(township)
    [changed] = sweep.sweep()
    task = township.task(key)
    assert changed.res_id == task["id"]
    assert task["status"] == "requested"
    assert task["owner"] == {"reference": "Organization/CITY-CENTRAL"}
    assert extension(task, PASSED_OVER) == "CITY_FIRST"
    assert "deadline missed" in task["note"][-1]["text"]
    deadline = task["restriction"]["period"]["end"]
    assert deadline > (MONDAY_10 + timedelta(hours=3)).astimezone(UTC).isoformat()
    waiting = {(e.topic, e.destination) for e in township.outbox() if e.status == "pending"}
    assert waiting == {("request", "CITY-CENTRAL-fhir"), ("cancel", "CITY-FIRST-fhir")}
    township.deliver()
    assert hospital.task(key)["status"] == "cancelled"  # withdrawn from the first hospital
    assert sweep.sweep() == []  # the new deadline is not missed
    assert _told(township, consortium_ca) == ["received", "escalated"]


def test_a_missed_deadline_nobody_else_can_take_is_noted_once(pair, consortium_ca):
    township, hospital = pair
    key = _request(township, consortium_ca)["task"]["key"]
    township.ctx.teleconsult.rules = RoutingRules.parse(ONLY_CITY_FIRST)
    township.deliver()
    _late(township)
    sweep = Deadlines(township.ctx.teleconsult)
    [changed] = sweep.sweep()
    task = township.task(key)
    assert task["status"] == "received"
    assert task["owner"] == {"reference": "Organization/CITY-FIRST"}
    assert extension(task, ESCALATED) == task["restriction"]["period"]["end"]
    assert "无其他医院可接收" in task["note"][-1]["text"]
    assert sweep.sweep() == []  # acted on once
    assert [e.topic for e in township.outbox() if e.status == "pending"] == []
    assert _told(township, consortium_ca) == ["received", "escalated"]


def test_an_accepted_request_is_not_taken_from_its_specialist(pair, consortium_ca):
    township, hospital = pair
    key = _request(township, consortium_ca)["task"]["key"]
    township.deliver()
    there = hospital.task(key)
    assert _op(hospital, consortium_ca, there["id"], "accept", "specialist.city").is_success
    hospital.deliver()
    _late(township, hours=30)
    assert Deadlines(township.ctx.teleconsult).sweep() == []
    assert township.task(key)["owner"] == {"reference": "Organization/CITY-FIRST"}


def test_the_gateway_sweeps_for_missed_deadlines_on_its_own(pair, consortium_ca):
    import time

    from teleconsult.delivery import Workers

    township, hospital = pair
    key = _request(township, consortium_ca, **ECG)["task"]["key"]
    township.deliver()
    _late(township)
    workers = Workers(
        township.ctx.courier, 0, deadlines=Deadlines(township.ctx.teleconsult), every=0.05
    )
    workers.start()
    try:
        give_up = time.monotonic() + 20
        while township.task(key).get("owner", {}).get("reference") != "Organization/CITY-CENTRAL":
            assert time.monotonic() < give_up, "the sweep did not escalate the request"
            time.sleep(0.05)
    finally:
        workers.stop()
