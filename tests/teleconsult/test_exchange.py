"""Two member gateways exchange a request over HTTPS with mutual TLS: the request travels, the
hospital's specialist works it, the status comes back; refusals, duplicates, cancellation,
re-routing after a rejection, a destination that is down, and a refused certificate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from records import inbound, outbox
from security.principal import SYSTEM
from teleconsult.routing import RoutingRules
from tests.teleconsult.conftest import HOSPITAL, TOWNSHIP, Member, running_member
from tests.tls import make_ca

RULES = """
[[rule]]
name = "to City First, else City Central"
kind = ["imaging", "ecg", "consultation"]
to = ["CITY_FIRST", "CITY_CENTRAL"]
"""
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=timezone(timedelta(hours=8)))
PATIENT = "demo-wang-xiuying"


def _fix_clock(member: Member) -> None:
    member.ctx.teleconsult.rules = RoutingRules.parse(RULES)
    member.ctx.teleconsult.clock = lambda: MONDAY_10.astimezone(UTC)


def _request(township: Member, ca: Any, **form: Any) -> dict[str, Any]:
    _fix_clock(township)
    body = {
        "kind": "consultation",
        "patient": PATIENT,
        "priority": "urgent",
        "question": "胸闷三天，请会诊",
        **form,
    }
    with township.api(ca) as api:
        made = api.post(
            "/api/teleconsult/requests", json=body, headers=township.token("doctor.xingfu")
        )
    assert made.status_code == 201, made.text
    return dict(made.json())


def test_a_request_travels_is_worked_and_its_status_comes_back(pair, consortium_ca):
    township, hospital = pair
    made = _request(township, consortium_ca)
    key = made["task"]["key"]
    assert made["routing"]["organization"] == HOSPITAL
    assert "远程会诊中心" in made["routing"]["explanation"]
    assert made["task"]["status"] == "requested"
    assert made["task"]["deadline"] == (MONDAY_10 + timedelta(hours=2)).astimezone(UTC).isoformat(
        timespec="seconds"
    )
    [row] = township.outbox()
    assert (row.topic, row.destination, row.status) == ("request", "CITY-FIRST-fhir", "pending")

    delivered = township.deliver()
    assert [e.topic for e in delivered] == ["request"]
    assert township.outbox()[0].status == outbox.DELIVERED
    assert township.task(key)["status"] == "received"

    # the hospital has the request, for the Patient its own record has under the resident's
    # identity number (the demo loaded the same residents at both ends)
    there = hospital.task(key)
    assert there["status"] == "received"
    assert there["owner"] == {"reference": "Organization/CITY-FIRST"}
    patient_ref = there["for"]["reference"]
    assert there["for"]["identifier"]["system"] == "urn:oid:2.16.156.10011.1.3"
    with hospital.api(consortium_ca) as api:
        specialist = hospital.token("specialist.city")
        worklist = api.get("/api/teleconsult/worklist", headers=specialist)
        assert worklist.status_code == 200, worklist.text
        [item] = worklist.json()
        assert item["key"] == key and item["priority"] == "urgent"
        patient = api.get(f"/fhir/{patient_ref}", headers=specialist).json()
        assert patient["name"][0]["text"] == "王秀英"
        assert patient["identifier"][0]["value"] == there["for"]["identifier"]["value"]
        sr = api.get(f"/fhir/{there['focus']['reference']}", headers=specialist).json()
        assert sr["note"][0]["text"] == "胸闷三天，请会诊"
        accepted = api.post(f"/fhir/Task/{there['id']}/$accept", headers=specialist)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["status"] == "accepted"
    assert [e.topic for e in hospital.deliver()] == ["status"]
    assert township.task(key)["status"] == "accepted"

    with hospital.api(consortium_ca) as api:
        specialist = hospital.token("specialist.city")
        move = f"/api/teleconsult/requests/{there['id']}/status"
        assert api.post(move, json={"status": "in-progress"}, headers=specialist).is_success
        held = api.post(
            move, json={"status": "on-hold", "reason": "等待既往心电图"}, headers=specialist
        )
        assert held.status_code == 200 and held.json()["status_reason"] == "等待既往心电图"
        skipped = api.post(move, json={"status": "completed"}, headers=specialist)
        assert skipped.status_code == 422
        assert "from on-hold to completed" in skipped.json()["issue"][0]["diagnostics"]
    assert [e.topic for e in hospital.deliver()] == ["status", "status"]
    back = township.task(key)
    assert back["status"] == "on-hold" and back["statusReason"]["text"] == "等待既往心电图"


def test_a_message_delivered_twice_is_answered_again_and_filed_once(pair, consortium_ca):
    township, hospital = pair
    key = _request(township, consortium_ca)["task"]["key"]
    [row] = township.outbox()
    with township.ctx.engine.connect() as conn:
        bundle = township.ctx.courier.outgoing(conn, row, HOSPITAL)
    township.deliver()
    first = hospital.task(key)
    # a retry after a lost answer: the same message id again
    township.ctx.courier._post(_endpoint(township), HOSPITAL, bundle)
    assert hospital.task(key) == first  # one Task, unchanged
    with hospital.ctx.engine.connect() as conn:
        archived = inbound.same_control_id(conn, "fhir-msg", TOWNSHIP, row.id)
    assert len(archived) == 1 and archived[0].outcome == "accepted"
    # the id decides: a retry rebuilt from a record that changed meanwhile is the same message
    bundle["entry"][1]["resource"]["priority"] = "stat"
    township.ctx.courier._post(_endpoint(township), HOSPITAL, bundle)
    assert hospital.task(key) == first


def _endpoint(member: Member, organization: str = "CITY-FIRST"):  # type: ignore[no-untyped-def]
    """Where ``member`` sends FHIR messages for ``organization``."""
    from teleconsult import directory

    with member.ctx.engine.connect() as conn:
        found = directory.endpoint(conn, organization, directory.FHIR)
    assert found is not None
    return found


def test_only_a_member_with_its_certificate_and_a_peer_token_may_deliver(pair, consortium_ca):
    township, hospital = pair
    message = {"resourceType": "Bundle", "type": "message", "id": "x", "entry": []}
    url = f"{hospital.base}/fhir/$process-message"
    peer_token = _peer_token(hospital, TOWNSHIP)

    def post(cert: str | None, headers: dict[str, str]) -> httpx.Response:
        verify = consortium_ca.client_context(cert) if cert else str(consortium_ca.ca_cert)
        with httpx.Client(verify=verify) as client:
            return client.post(url, json=message, headers=headers)

    no_cert = post(None, peer_token)
    assert no_cert.status_code == 403 and "client certificate" in no_cert.text
    wrong_member = post(HOSPITAL, peer_token)  # certificate of another member
    assert wrong_member.status_code == 403 and "must agree" in wrong_member.text
    person = post(TOWNSHIP, hospital.token("doctor.xingfu"))
    assert person.status_code == 403 and "member gateways" in person.text
    no_token = post(TOWNSHIP, {})
    assert no_token.status_code == 401
    malformed = post(TOWNSHIP, peer_token)  # right caller, no MessageHeader
    assert malformed.status_code == 400 and "MessageHeader" in malformed.text


def _peer_token(hospital: Member, member: str) -> dict[str, str]:
    return hospital.token(f"{member.lower()}-gateway")


def test_cancelling_before_delivery_sends_nothing_and_after_tells_the_hospital(pair, consortium_ca):
    township, hospital = pair
    early = _request(township, consortium_ca)["task"]
    with township.api(consortium_ca) as api:
        doctor = township.token("doctor.xingfu")
        cancelled = api.post(f"/fhir/Task/{early['id']}/$cancel", headers=doctor)
        assert cancelled.status_code == 200, cancelled.text
    statuses = {(e.topic, e.status) for e in township.outbox(subject=early["id"])}
    assert ("request", "cancelled") in statuses
    township.deliver()
    with hospital.ctx.engine.connect() as conn:
        from teleconsult.messages import REQUEST_KEY_SYSTEM

        assert not hospital.ctx.records.find_by_identifier(
            conn, "Task", REQUEST_KEY_SYSTEM, early["key"]
        )

    late = _request(township, consortium_ca)["task"]
    township.deliver()
    assert hospital.task(late["key"])["status"] == "received"
    with township.api(consortium_ca) as api:
        api.post(
            f"/fhir/Task/{late['id']}/$cancel",
            json={
                "resourceType": "Parameters",
                "parameter": [{"name": "reason", "valueString": "患者已转诊"}],
            },
            headers=township.token("doctor.xingfu"),
        )
    township.deliver()
    there = hospital.task(late["key"])
    assert there["status"] == "cancelled"
    assert there["statusReason"]["text"] == "患者已转诊"


def _reject(hospital: Member, key: str, ca: Any, reason: str) -> None:
    there = hospital.task(key)
    with hospital.api(ca) as api:
        rejected = api.post(
            f"/fhir/Task/{there['id']}/$reject",
            json={
                "resourceType": "Parameters",
                "parameter": [{"name": "reason", "valueString": reason}],
            },
            headers=hospital.token("specialist.city"),
        )
    assert rejected.status_code == 200, rejected.text
    hospital.deliver()


def test_a_rejection_routes_the_request_to_the_next_hospital(pair, consortium_ca):
    township, hospital = pair
    made = _request(township, consortium_ca, kind="ecg", observations=[f"{PATIENT}-bp1"])
    key, task_id = made["task"]["key"], made["task"]["id"]
    township.deliver()
    _reject(hospital, key, consortium_ca, "本院心电诊断医师外出")
    task = township.task(key)
    assert task["status"] == "requested"  # routed again
    assert task["owner"] == {"reference": "Organization/CITY-CENTRAL"}
    assert "CITY_CENTRAL" in task["note"][-1]["text"]
    assert "CITY_FIRST" in task["note"][-1]["text"]  # why not the first choice
    with township.ctx.engine.connect() as conn:
        from records import store

        sr = store.read(conn, "ServiceRequest", task["focus"]["reference"].split("/")[1]).json()
    assert {"reference": "Organization/CITY-CENTRAL"} in sr["performer"]
    waiting = [e for e in township.outbox(subject=task_id) if e.status == "pending"]
    assert [(e.topic, e.destination) for e in waiting] == [("request", "CITY-CENTRAL-fhir")]


def test_a_rejection_with_nowhere_else_to_go_stays_rejected_for_the_doctor(pair, consortium_ca):
    township, hospital = pair
    key = _request(township, consortium_ca)["task"]["key"]  # only City First consults
    township.deliver()
    _reject(hospital, key, consortium_ca, "非本院专科范围")
    task = township.task(key)
    assert task["status"] == "rejected"
    assert task["statusReason"]["text"] == "非本院专科范围"
    assert "no other hospital" in task["note"][-1]["text"]


def _dead_and_failed(township: Member, key: str, reason: str) -> None:
    [row] = [r for r in township.outbox() if r.channel != "rest-hook"]
    assert row.status == "dead", row
    assert reason in (row.last_error or ""), row.last_error
    task = township.task(key)
    assert task["status"] == "failed"
    assert "could not be delivered" in task["statusReason"]["text"]
    told = township.ctx.records.search(
        SYSTEM, "Communication", [("about", f"Task/{task['id']}")]
    ).matches
    assert [c.json()["category"][0]["coding"][0]["code"] for c in told] == ["undeliverable"]


def test_our_expired_certificate_holds_the_request_and_nothing_is_sent(
    tmp_path: Path, consortium_ca
):
    cert, key_file = consortium_ca.client_files("EXPIRED")
    with (
        running_member(
            TOWNSHIP,
            tmp_path,
            consortium_ca,
            [HOSPITAL],
            consortium_tls_cert=cert,
            consortium_tls_key=key_file,
        ) as township,
        running_member(HOSPITAL, tmp_path, consortium_ca, [TOWNSHIP]) as hospital,
    ):
        township.point_at(hospital)
        key = _request(township, consortium_ca)["task"]["key"]
        for _ in range(3):
            township.due_now()
            township.deliver(limit=1)
        # a fault of the township's own configuration: the row waits for the operator to
        # renew the certificate, its attempts not used up, and the doctor's request stays
        [row] = township.outbox()
        assert row.status == "pending" and row.attempts == 0, row
        assert (row.last_error or "").startswith("held: this gateway's client certificate expired")
        assert row.next_attempt > datetime.now(UTC) + timedelta(seconds=30)
        assert township.task(key)["status"] == "requested"
        with hospital.ctx.engine.connect() as conn:
            assert inbound.listing(conn, protocol="fhir-msg")[0] == 0


def test_a_destination_with_a_certificate_we_do_not_trust_is_a_dead_letter(
    tmp_path: Path, consortium_ca
):
    (tmp_path / "stranger").mkdir()
    stranger = make_ca(tmp_path / "stranger", clients=[])
    with (
        running_member(TOWNSHIP, tmp_path, consortium_ca, [HOSPITAL]) as township,
        running_member(
            HOSPITAL,
            tmp_path,
            consortium_ca,
            [TOWNSHIP],
            http_tls_cert=stranger.server_cert,
            http_tls_key=stranger.server_key,
        ) as hospital,
    ):
        township.point_at(hospital)
        key = _request(township, consortium_ca)["task"]["key"]
        township.deliver(limit=1)
        _dead_and_failed(township, key, "TLS refused")
        row = township.outbox()[0]
        assert "certificate verify failed" in (row.last_error or "")
        with hospital.ctx.engine.connect() as conn:
            assert inbound.listing(conn, protocol="fhir-msg")[0] == 0


def test_a_destination_down_then_up_gets_everything_once(pair, consortium_ca, tmp_path: Path):
    township, hospital = pair
    township.point_at(hospital, address="https://localhost:9/fhir")  # nothing listens there
    key = _request(township, consortium_ca)["task"]["key"]
    township.deliver(limit=1)
    [row] = township.outbox()
    assert row.status == "pending" and "cannot connect" in (row.last_error or "")
    assert township.task(key)["status"] == "requested"
    township.point_at(hospital)
    township.deliver()
    assert township.outbox()[0].status == "delivered"
    assert hospital.task(key)["status"] == "received"


def test_an_endpoint_without_tls_holds_the_request_and_nothing_is_sent(pair, consortium_ca):
    township, hospital = pair
    township.point_at(hospital, address=f"http://localhost:{hospital.port}/fhir")
    key = _request(township, consortium_ca)["task"]["key"]
    township.deliver(limit=1)
    [row] = township.outbox()
    assert row.status == "pending" and row.attempts == 0, row
    assert "is an https:// URL" in (row.last_error or "")
    assert township.task(key)["status"] == "requested"
    with hospital.ctx.engine.connect() as conn:
        assert inbound.listing(conn, protocol="fhir-msg")[0] == 0
    township.point_at(hospital)  # the operator mends the address
    township.due_now()
    township.deliver()
    assert township.outbox()[0].status == "delivered"
    assert hospital.task(key)["status"] == "received"


def test_an_answer_to_a_request_not_yet_recorded_as_delivered_is_taken(pair, consortium_ca):
    township, hospital = pair
    key = _request(township, consortium_ca)["task"]["key"]
    entry = outbox.claim(township.ctx.engine, "stopped", timedelta(minutes=5))
    assert entry is not None and entry.topic == "request"
    township.ctx.courier._deliver(entry)  # its worker stops before recording the delivery
    assert township.task(key)["status"] == "requested"
    there = hospital.task(key)
    with hospital.api(consortium_ca) as api:
        accepted = api.post(
            f"/fhir/Task/{there['id']}/$accept", headers=hospital.token("specialist.city")
        )
    assert accepted.status_code == 200, accepted.text
    hospital.deliver()
    assert [e.status for e in hospital.outbox() if e.topic == "status"] == ["delivered"]
    assert township.task(key)["status"] == "accepted"
    township.ctx.courier._delivered(entry)  # recorded at last: nothing moves back
    assert township.outbox()[0].status == "delivered"
    assert township.task(key)["status"] == "accepted"


def _trust(township: Member, hospital: Member) -> None:
    from teleconsult import directory

    with township.ctx.engine.begin() as conn:
        from records import store

        body = store.read(conn, "Organization", "CITY-FIRST").json()
        body = directory.with_trusted_key(body, hospital.ctx.teleconsult.public_jwk())
        store.write(conn, "Organization", "CITY-FIRST", body, "PUT")


def _accepted_request(township: Member, hospital: Member, ca: Any) -> tuple[str, str]:
    key = _request(township, ca)["task"]["key"]
    township.deliver()
    there = hospital.task(key)
    with hospital.api(ca) as api:
        specialist = hospital.token("specialist.city")
        for op in ("accept", "start"):
            assert api.post(f"/fhir/Task/{there['id']}/${op}", headers=specialist).is_success
    hospital.deliver()
    return key, there["id"]


def _write_report(hospital: Member, task_id: str, ca: Any) -> dict[str, Any]:
    with hospital.api(ca) as api:
        written = api.post(
            f"/api/teleconsult/requests/{task_id}/report",
            json={
                "conclusion": "窦性心律，ST段轻度压低，建议随访复查",
                "codes": [{"system": "http://snomed.info/sct", "code": "426783006"}],
            },
            headers=hospital.token("specialist.city"),
        )
    assert written.status_code == 201, written.text
    return dict(written.json())


def test_the_signed_report_comes_back_into_the_residents_record(pair, consortium_ca):
    township, hospital = pair
    _trust(township, hospital)
    key, there_id = _accepted_request(township, hospital, consortium_ca)
    written = _write_report(hospital, there_id, consortium_ca)
    assert written["task"]["status"] == "completed"
    assert [e.topic for e in hospital.deliver()] == ["report"]

    task = township.task(key)
    assert task["status"] == "completed"
    report_ref = task["output"][0]["valueReference"]["reference"]
    with township.api(consortium_ca) as api:
        for user in ("doctor.xingfu", "resident.wang"):
            report = api.get(f"/fhir/{report_ref}", headers=township.token(user))
            assert report.status_code == 200, (user, report.text)
            body = report.json()
            assert body["conclusion"] == "窦性心律，ST段轻度压低，建议随访复查"
            assert body["subject"]["reference"] == f"Patient/{PATIENT}"
            assert body["performer"][0]["display"] == "张敏"
        provenance = api.get(
            "/fhir/Provenance",
            params={"target": report_ref},
            headers=township.token("doctor.xingfu"),
        ).json()["entry"][0]["resource"]
    # the township can check the signature again on its own copy, with the hospital's key
    from security import signing
    from teleconsult import directory
    from teleconsult.portable import signed_form

    with township.ctx.engine.connect() as conn:
        keys = directory.trusted_keys(conn, "CITY-FIRST")
    signing.verify_signature(signed_form(body), provenance["signature"][0], keys)
    altered = {**body, "conclusion": "未见异常"}
    with pytest.raises(signing.SignatureInvalid):
        signing.verify_signature(signed_form(altered), provenance["signature"][0], keys)


def test_a_report_from_a_key_nobody_registered_is_refused_and_dead_lettered(pair, consortium_ca):
    township, hospital = pair  # no `consortium trust` at the township
    key, there_id = _accepted_request(township, hospital, consortium_ca)
    _write_report(hospital, there_id, consortium_ca)
    hospital.deliver()
    [row] = [e for e in hospital.outbox() if e.topic == "report"]
    assert row.status == "dead" and "consortium trust CITY_FIRST" in (row.last_error or "")
    assert township.task(key)["status"] == "in-progress"
    with township.ctx.engine.connect() as conn:
        _, refused = inbound.listing(conn, protocol="fhir-msg", outcome="rejected")
    assert refused and refused[0].message_type == "report"
    # the operator registers the key and sends the report again
    _trust(township, hospital)
    outbox.requeue(hospital.ctx.engine, row.id)
    hospital.deliver()
    assert township.task(key)["status"] == "completed"


# -- what a member may not do (from a review of the exchange) ---------------------------------


def test_a_member_gateways_token_is_good_for_process_message_only(pair, consortium_ca):
    township, hospital = pair
    peer = _peer_token(hospital, TOWNSHIP)
    with httpx.Client(verify=consortium_ca.client_context(TOWNSHIP)) as client:
        for method, path in [
            ("GET", "/fhir/Patient"),
            ("GET", "/api/teleconsult/worklist"),
            ("POST", "/fhir/Task/x/$accept"),
            ("GET", "/dicomweb/studies"),
        ]:
            answer = client.request(method, f"{hospital.base}{path}", headers=peer)
            assert answer.status_code == 403, (path, answer.text)
            assert "$process-message only" in answer.text


def test_a_write_cannot_bring_another_clinics_resident_within_reach(pair, consortium_ca):
    township, _ = pair
    foreign = "demo-zhang-guilan"  # managed by Heping, not Xingfu
    request = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{foreign}"},
        "requester": {"reference": "Practitioner/doctor-xingfu"},
    }
    with township.api(consortium_ca) as api:
        doctor = township.token("doctor.xingfu")
        made = api.post("/fhir/ServiceRequest", json=request, headers=doctor)
        assert made.status_code == 403, made.text
        assert api.get(f"/fhir/Patient/{foreign}", headers=doctor).status_code == 404
        refused = api.post(
            "/api/teleconsult/requests",
            json={"kind": "consultation", "patient": foreign},
            headers=doctor,
        )
        assert refused.status_code == 404


def test_a_message_for_a_member_this_gateway_does_not_serve_is_refused(pair, consortium_ca):
    township, hospital = pair
    _request(township, consortium_ca)
    [row] = township.outbox()
    with township.ctx.engine.connect() as conn:
        bundle = township.ctx.courier.outgoing(conn, row, "CITY_CENTRAL")
    bundle["entry"][1]["resource"]["owner"] = {"reference": "Organization/CITY-CENTRAL"}
    with pytest.raises(Exception, match="404") as refused:
        township.ctx.courier._post(_endpoint(township), HOSPITAL, bundle)
    assert "not a member this gateway serves" in str(refused.value)


def test_a_signed_report_is_filed_only_on_its_own_request(pair, consortium_ca):
    township, hospital = pair
    _trust(township, hospital)
    key_one, one = _accepted_request(township, hospital, consortium_ca)
    key_two, _ = _accepted_request(township, hospital, consortium_ca)
    _write_report(hospital, one, consortium_ca)
    [row] = [e for e in hospital.outbox() if e.topic == "report"]
    with hospital.ctx.engine.connect() as conn:
        bundle = hospital.ctx.courier.outgoing(conn, row, TOWNSHIP)
    # the same report, signed again by the hospital, but sent as the answer to request two
    from security import signing
    from teleconsult import messages as msg
    from teleconsult.portable import signed_form

    task, report = bundle["entry"][1]["resource"], bundle["entry"][2]["resource"]
    task["identifier"] = [msg.request_key(key_two)]
    provenance = bundle["entry"][3]["resource"]
    provenance["signature"] = [
        signing.provenance_signature(
            signed_form(report),
            hospital.ctx.teleconsult.signing_key,
            hospital.ctx.teleconsult.key_id,
            "Organization/CITY-FIRST",
            datetime.now(UTC),
        )
    ]
    bundle["id"] = "another-message"
    with pytest.raises(Exception, match="based on another request"):
        hospital.ctx.courier._post(_endpoint(hospital, "XINGFU-THC"), TOWNSHIP, bundle)
    assert township.task(key_two)["status"] == "in-progress"


def test_completed_comes_with_a_report_and_a_report_needs_an_accepted_request(pair, consortium_ca):
    township, hospital = pair
    key = _request(township, consortium_ca)["task"]["key"]
    township.deliver()
    there = hospital.task(key)
    with hospital.api(consortium_ca) as api:
        specialist = hospital.token("specialist.city")
        early = api.post(
            f"/api/teleconsult/requests/{there['id']}/report",
            json={"conclusion": "未见异常"},
            headers=specialist,
        )
        assert early.status_code == 422 and "accept it before reporting" in early.text
        api.post(f"/fhir/Task/{there['id']}/$accept", headers=specialist)
        by_hand = api.post(
            f"/api/teleconsult/requests/{there['id']}/status",
            json={"status": "completed"},
            headers=specialist,
        )
        assert by_hand.status_code == 422 and "does not move a Task to completed" in by_hand.text


def test_cancelling_a_request_never_delivered_sends_no_cancel(pair, consortium_ca):
    township, hospital = pair
    made = _request(township, consortium_ca)["task"]
    with township.api(consortium_ca) as api:
        api.post(f"/fhir/Task/{made['id']}/$cancel", headers=township.token("doctor.xingfu"))
    assert [(e.topic, e.status) for e in township.outbox()] == [("request", "cancelled")]


def test_a_malformed_message_gets_an_operation_outcome_not_a_server_error(pair, consortium_ca):
    township, hospital = pair
    peer = _peer_token(hospital, TOWNSHIP)
    header = {
        "resourceType": "MessageHeader",
        "eventCoding": {"system": "urn:yilian:teleconsult-event", "code": "request"},
        "source": {"name": TOWNSHIP},
    }
    bad = {
        "resourceType": "Bundle",
        "type": "message",
        "id": "m-1",
        "entry": [{"resource": header}, "not an entry"],
    }
    with httpx.Client(verify=consortium_ca.client_context(TOWNSHIP)) as client:
        answer = client.post(f"{hospital.base}/fhir/$process-message", json=bad, headers=peer)
    assert answer.status_code == 400
    assert "every entry of a message holds a resource" in answer.text


def test_documents_travel_with_the_request_and_are_filed_under_the_resident(pair, consortium_ca):
    import base64

    from records import store

    township, hospital = pair
    letter = "转诊单：胸闷三天，心电图示ST段压低".encode()
    document = {
        "resourceType": "DocumentReference",
        "status": "current",
        "description": "转诊单 referral letter",
        "subject": {"reference": f"Patient/{PATIENT}"},
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(letter).decode(),
                    "title": "转诊单",
                }
            },
            {"attachment": {"contentType": "application/pdf", "url": "Binary/local-only"}},
        ],
    }
    with township.api(consortium_ca) as api:
        made = api.post(
            "/fhir/DocumentReference",
            json=document,
            headers={**township.token("doctor.xingfu"), "Content-Type": "application/fhir+json"},
        )
    assert made.status_code == 201, made.text
    key = _request(township, consortium_ca, documents=[made.json()["id"]])["task"]["key"]
    township.deliver()
    there = hospital.task(key)
    with hospital.ctx.engine.connect() as conn:
        sr = store.read(conn, "ServiceRequest", there["focus"]["reference"].split("/")[1]).json()
        [ref] = [r for r in sr["supportingInfo"] if r["type"] == "DocumentReference"]
        filed = store.read(conn, "DocumentReference", ref["reference"].split("/")[1]).json()
    assert filed["subject"] == {"reference": there["for"]["reference"]}
    assert filed["custodian"] == {"reference": "Organization/XINGFU-THC"}
    assert filed["description"] == "转诊单 referral letter"
    [content] = filed["content"]  # the attachment that only pointed at the township stayed
    assert base64.b64decode(content["attachment"]["data"]) == letter
    # the specialist reads it through the FHIR API
    with hospital.api(consortium_ca) as api:
        read = api.get(f"/fhir/{ref['reference']}", headers=hospital.token("specialist.city"))
    assert read.status_code == 200, read.text
