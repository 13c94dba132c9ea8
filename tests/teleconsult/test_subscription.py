"""FHIR R4 Subscriptions (rest-hook) at one gateway: validated on write and stored active with
their owner; matched in the writer's transaction as their owner; delivered through the outbox
to a real HTTPS receiver (POST without payload, PUT of the resource with one), retried while
the receiver is down, dead-lettered on a 4xx with the Subscription set to error."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from records import outbox
from records.outbox import Backoff, Entry
from teleconsult import notify, subscription
from teleconsult.delivery import Courier, DeliverySettings
from tests.conftest import stored_notification
from tests.fhir_schema import assert_r4
from tests.gateway.test_notifications_api import _other_doctor
from tests.teleconsult.receiver import Receiver
from tests.tls import TestCA, make_ca

ORG = "COUNTY-HOSP"  # the admin's own Organization in the demo directory
NOTIFICATIONS = f"Communication?category={notify.CATEGORY}|"


@pytest.fixture(scope="module")
def hook_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("hook-ca"), clients=[])


@pytest.fixture
def courier(demo, hook_ca: TestCA) -> Courier:  # type: ignore[no-untyped-def]
    """The gateway's courier, with a client TLS context that trusts the receiver's CA."""
    settings = DeliverySettings(
        tls=ssl.create_default_context(cafile=str(hook_ca.ca_cert)),
        backoff=Backoff(0.0, 0.0, 10),
        timeout=5.0,
    )
    return Courier(demo.records, demo.teleconsult, demo.dicom.store, settings)


@pytest.fixture
def receiver(hook_ca: TestCA) -> Iterator[Receiver]:
    with Receiver(hook_ca) as running:
        yield running


def _deliver(courier: Courier, limit: int = 20) -> list[Entry]:
    done = []
    for _ in range(limit):
        entry = courier.deliver_next()
        if entry is None:
            break
        done.append(entry)
    return done


def _rows(ctx: Any, **filters: Any) -> list[Entry]:
    return sorted(outbox.listing(ctx.engine, **filters), key=lambda e: e.seq)


def _subscription(criteria: str, endpoint: str, **channel: Any) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "tests",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint, **channel},
    }


def _subscribe(client, headers, body: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    made = client.post("/fhir/Subscription", json=body, headers=headers)
    assert made.status_code == 201, made.text
    return dict(made.json())


def _touch_org(client, headers, alias: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    org = client.get(f"/fhir/Organization/{ORG}", headers=headers).json()
    org["alias"] = [alias]
    updated = client.put(f"/fhir/Organization/{ORG}", json=org, headers=headers)
    assert updated.status_code == 200, updated.text
    return dict(updated.json())


# -- written -------------------------------------------------------------------------------------


def test_a_subscription_is_stored_active_with_its_owner(client, as_user):
    body = _subscription("Organization?name=县", "https://127.0.0.1:9/hook")
    body["error"] = "a client cannot write this"
    body["extension"] = [
        {
            "url": subscription.OWNER,
            "valueReference": {"identifier": {"system": "urn:yilian:user", "value": "x"}},
        }
    ]
    made = _subscribe(client, as_user("admin"), body)
    assert made["status"] == "active"
    assert "error" not in made
    [owner] = made["extension"]
    assert owner["url"] == subscription.OWNER
    assert owner["valueReference"]["identifier"]["value"] == "admin"  # the writer, not "x"
    assert_r4(made)


ENDPOINT, PAYLOAD, HEADER = (
    "Subscription.channel.endpoint",
    "Subscription.channel.payload",
    "Subscription.channel.header",
)
BAD = [
    (lambda b: b.update(criteria="Nothing?x=1"), "Subscription.criteria"),
    (lambda b: b.update(criteria="Organization?colour=blue"), "Subscription.criteria"),
    (lambda b: b.update(criteria="Organization?_count=5"), "Subscription.criteria"),
    (lambda b: b.update(criteria="AuditEvent?"), "Subscription.criteria"),
    (lambda b: b.update(criteria="Observation?code=1"), "Subscription.criteria"),  # admin
    (lambda b: b["channel"].update(type="websocket"), "Subscription.channel.type"),
    (lambda b: b["channel"].update(endpoint="http://x.example/hook"), ENDPOINT),
    (lambda b: b["channel"].update(endpoint="https://u:p@x.example/"), ENDPOINT),
    (lambda b: b["channel"].update(payload="application/xml"), PAYLOAD),
    (lambda b: b["channel"].update(header=["Host: evil"]), f"{HEADER}[0]"),
    (lambda b: b["channel"].update(header=["ok: 1", "no colon"]), f"{HEADER}[1]"),
    (lambda b: b.update(status="error"), "Subscription.status"),
]  # fmt: skip


@pytest.mark.parametrize(("spoil", "field"), BAD)
def test_a_subscription_this_gateway_cannot_serve_is_a_422_naming_the_field(
    client, as_user, spoil, field
):
    body = _subscription("Organization?", "https://127.0.0.1:9/hook")
    spoil(body)
    refused = client.post("/fhir/Subscription", json=body, headers=as_user("admin"))
    assert refused.status_code == 422, refused.text
    issue = refused.json()["issue"][0]
    assert issue["expression"] == [field], issue


def test_doctors_subscribe_to_their_notifications_and_residents_not_at_all(client, as_user):
    endpoint = "https://127.0.0.1:9/hook"
    for user in ("doctor.xingfu", "specialist.city"):
        _subscribe(client, as_user(user), _subscription(NOTIFICATIONS, endpoint))
        other = client.post(
            "/fhir/Subscription",
            json=_subscription("Observation?code=11524-6", endpoint),
            headers=as_user(user),
        )
        assert other.status_code == 422, other.text
        assert "notifications" in other.json()["issue"][0]["diagnostics"]
    for user in ("resident.wang", "insurer.county"):
        refused = client.post(
            "/fhir/Subscription",
            json=_subscription(NOTIFICATIONS, endpoint),
            headers=as_user(user),
        )
        assert refused.status_code == 403, (user, refused.text)


def test_a_doctors_subscription_is_theirs_an_administrator_may_only_turn_it_off(
    client, as_user, demo
):
    _other_doctor(demo)
    mine = _subscribe(
        client,
        as_user("doctor.xingfu"),
        _subscription(NOTIFICATIONS, "https://127.0.0.1:9/hook", header=["X-Key: k1"]),
    )
    url = f"/fhir/Subscription/{mine['id']}"
    other = as_user("doctor.other")
    assert client.get(url, headers=other).status_code == 404
    assert client.get("/fhir/Subscription", headers=other).json()["total"] == 0
    assert client.get("/fhir/Subscription", headers=as_user("doctor.xingfu")).json()["total"] == 1
    # the owner cannot be rewritten by its owner either
    someone_else = {"reference": "Practitioner/doctor-other"}
    renamed = {
        **mine,
        "extension": [{"url": subscription.OWNER, "valueReference": someone_else}],
    }
    kept = client.put(url, json=renamed, headers=as_user("doctor.xingfu"))
    assert kept.status_code == 200, kept.text
    assert kept.json()["extension"][0]["valueReference"]["reference"] == (
        "Practitioner/doctor-xingfu"
    )
    admin = as_user("admin")
    seen = client.get(url, headers=admin).json()
    redirected = {**seen, "channel": {**seen["channel"], "endpoint": "https://evil.example/"}}
    assert client.put(url, json=redirected, headers=admin).status_code == 403
    off = client.put(url, json={**seen, "status": "off"}, headers=admin)
    assert off.status_code == 200, off.text
    assert off.json()["status"] == "off"
    assert off.json()["extension"][0]["valueReference"]["identifier"]["value"] == "doctor.xingfu"
    assert client.delete(url, headers=other).status_code == 404


# -- matched and delivered -----------------------------------------------------------------------


def test_without_payload_the_endpoint_gets_a_post_with_no_body_and_its_headers(
    client, as_user, demo, courier, receiver
):
    admin = as_user("admin")
    sub = _subscribe(
        client,
        admin,
        _subscription("Organization?", receiver.url, header=["Authorization: Bearer s3cret"]),
    )
    _touch_org(client, admin, "县医院")
    [row] = _rows(demo)
    assert (row.channel, row.destination, row.subject) == ("rest-hook", sub["id"], sub["id"])
    assert [e.id for e in _deliver(courier)] == [row.id]
    [call] = receiver.calls
    assert (call.method, call.path, call.body) == ("POST", "/hook", b"")
    assert call.headers["authorization"] == "Bearer s3cret"
    assert call.headers["x-yilian-notification"] == row.id
    assert _rows(demo)[0].status == outbox.DELIVERED


def test_with_payload_the_resource_is_put_as_it_was_when_it_matched(
    client, as_user, demo, courier, receiver
):
    admin = as_user("admin")
    _subscribe(
        client, admin, _subscription("Organization?", receiver.url, payload="application/fhir+json")
    )
    first = _touch_org(client, admin, "一")
    second = _touch_org(client, admin, "二")
    assert len(_deliver(courier)) == 2
    assert [(c.method, c.path) for c in receiver.calls] == [
        ("PUT", f"/hook/Organization/{ORG}")
    ] * 2
    sent = [c.json() for c in receiver.calls]
    assert [s["meta"]["versionId"] for s in sent] == [
        first["meta"]["versionId"],
        second["meta"]["versionId"],
    ]
    assert [s["alias"] for s in sent] == [["一"], ["二"]]
    assert receiver.calls[0].headers["content-type"].startswith("application/fhir+json")
    for resource in sent:
        assert_r4(resource)


def test_a_write_the_criteria_do_not_match_sends_nothing(client, as_user, demo):
    admin = as_user("admin")
    _subscribe(client, admin, _subscription("Organization?name=不存在的医院", "https://x.example/"))
    _subscribe(client, admin, _subscription("Endpoint?", "https://x.example/"))
    _touch_org(client, admin, "县医院")
    assert _rows(demo) == []


def test_a_receiver_down_then_up_gets_everything_once_in_order(
    client, as_user, demo, courier, receiver
):
    admin = as_user("admin")
    _subscribe(
        client, admin, _subscription("Organization?", receiver.url, payload="application/fhir+json")
    )
    receiver.stop()  # the subscriber is down
    versions = [_touch_org(client, admin, f"第{n}次")["meta"]["versionId"] for n in range(3)]
    for _ in range(3):
        _deliver(courier, limit=1)
    waiting = _rows(demo)
    assert [e.status for e in waiting] == ["pending"] * 3
    assert waiting[0].attempts == 3 and "cannot reach the endpoint" in (waiting[0].last_error or "")
    assert [e.attempts for e in waiting[1:]] == [0, 0]  # held behind the first, in order
    receiver.start()  # up again, on the same port
    assert len(_deliver(courier)) == 3
    assert [c.json()["meta"]["versionId"] for c in receiver.calls] == versions
    assert len({c.headers["x-yilian-notification"] for c in receiver.calls}) == 3
    assert [e.status for e in _rows(demo)] == ["delivered"] * 3
    assert _deliver(courier) == []  # nothing twice


def test_a_5xx_is_retried_and_then_delivered(client, as_user, demo, courier, receiver):
    admin = as_user("admin")
    sub = _subscribe(client, admin, _subscription("Organization?", receiver.url))
    _touch_org(client, admin, "县医院")
    receiver.answer = 503
    _deliver(courier, limit=1)
    [row] = _rows(demo)
    assert row.status == "pending" and "503" in (row.last_error or "")
    receiver.answer = 200
    _deliver(courier)
    assert _rows(demo)[0].status == "delivered"
    assert client.get(f"/fhir/Subscription/{sub['id']}", headers=admin).json()["status"] == "active"


def test_a_4xx_is_a_dead_letter_and_the_subscription_goes_to_error(
    client, as_user, demo, courier, receiver
):
    admin = as_user("admin")
    sub = _subscribe(client, admin, _subscription("Organization?", receiver.url))
    url = f"/fhir/Subscription/{sub['id']}"
    _touch_org(client, admin, "一")
    _touch_org(client, admin, "二")
    receiver.answer = 404
    _deliver(courier)
    first, second = _rows(demo)
    assert first.status == outbox.DEAD and "answered 404" in (first.last_error or "")
    assert second.status == outbox.CANCELLED  # nothing more goes to a Subscription in error
    stopped = client.get(url, headers=admin).json()
    assert stopped["status"] == "error"
    assert "rest-hook delivery failed: the endpoint answered 404" in stopped["error"]
    _touch_org(client, admin, "三")
    assert len(_rows(demo)) == 2  # an inactive Subscription matches nothing

    # the receiver is mended; the owner starts the Subscription again and the operator requeues
    receiver.answer = 200
    restarted = client.put(url, json={**stopped, "status": "active"}, headers=admin)
    assert restarted.status_code == 200, restarted.text
    assert restarted.json()["status"] == "active" and "error" not in restarted.json()
    for entry in (first, second):
        assert outbox.requeue(demo.engine, entry.id) is not None
    assert len(_deliver(courier)) == 2
    assert [e.status for e in _rows(demo)] == ["delivered", "delivered"]


def test_deleting_a_subscription_drops_what_waited_for_it(client, as_user, demo, courier):
    admin = as_user("admin")
    sub = _subscribe(client, admin, _subscription("Organization?", "https://127.0.0.1:9/hook"))
    _touch_org(client, admin, "县医院")
    assert client.delete(f"/fhir/Subscription/{sub['id']}", headers=admin).status_code == 204
    assert [e.status for e in _rows(demo)] == [outbox.CANCELLED]
    assert _deliver(courier) == []


def test_a_doctor_is_pushed_their_own_notifications_only(client, as_user, demo, courier, receiver):
    _other_doctor(demo)
    _subscribe(
        client,
        as_user("doctor.xingfu"),
        _subscription(NOTIFICATIONS, receiver.url, payload="application/fhir+json"),
    )
    mine = stored_notification(demo, "Practitioner/doctor-xingfu", "给李医生")
    stored_notification(demo, "Practitioner/doctor-other", "给另一位医生")
    assert len(_deliver(courier)) == 1
    [call] = receiver.calls
    assert call.path == f"/hook/Communication/{mine}"
    pushed = call.json()
    assert pushed["payload"][0]["contentString"] == "给李医生"
    assert_r4(pushed)


def test_a_user_no_longer_active_is_told_nothing(client, as_user, demo):
    _subscribe(client, as_user("doctor.xingfu"), _subscription(NOTIFICATIONS, "https://x.example/"))
    from sqlalchemy import update

    from records.schema import app_user

    with demo.engine.begin() as conn:
        conn.execute(
            update(app_user).where(app_user.c.username == "doctor.xingfu").values(active=False)
        )
    stored_notification(demo, "Practitioner/doctor-xingfu")
    assert _rows(demo) == []


# -- cost and reach --------------------------------------------------------------------------------


def test_without_subscriptions_a_write_costs_no_query(client, as_user, demo, monkeypatch):
    loads: list[int] = []
    real = subscription._load

    def counting(conn):  # type: ignore[no-untyped-def]
        loads.append(1)
        return real(conn)

    monkeypatch.setattr(subscription, "_load", counting)
    assert demo.subscriptions is not None
    demo.subscriptions.invalidate()
    admin = as_user("admin")
    for n in range(5):
        _touch_org(client, admin, str(n))
    assert len(loads) == 1  # loaded once, then trusted for its time to live
    _subscribe(client, admin, _subscription("Organization?", "https://x.example/"))
    _touch_org(client, admin, "after")  # a Subscription written here is seen at once
    assert len(_rows(demo)) == 1


def test_what_the_ingest_writes_is_observed_too(demo):
    from adapters.hl7v2.ingest import Origin
    from tests.adapters.hl7v2.conftest import oru

    seen: list[str] = []

    def spy(_conn, versions):  # type: ignore[no-untyped-def]
        seen.extend(v.res_type for v in versions)

    demo.records.observe(spy)
    try:
        reply = demo.hl7.receive(oru("OBS-1"), Origin("mllp", "127.0.0.1"))
    finally:
        demo.records.observers.remove(spy)
    assert reply.code == "AA"
    assert "Observation" in seen and "DiagnosticReport" in seen
