"""The Task lifecycle is enforced at the records boundary: FHIR PUT, transaction Bundles and
every other writer obey one table, and each side makes only its own moves."""

from __future__ import annotations

import pytest

from records.errors import Unprocessable
from security.principal import SYSTEM, Principal, Role
from teleconsult import lifecycle

FHIR = {"Content-Type": "application/fhir+json"}
PATIENT = "demo-wang-xiuying"


def _task(status: str, **extra):  # type: ignore[no-untyped-def]
    return {
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "for": {"reference": f"Patient/{PATIENT}"},
        "owner": {"reference": "Organization/CITY-FIRST"},
        **extra,
    }


def _put(client, headers, rid: str, status: str):  # type: ignore[no-untyped-def]
    return client.put(f"/fhir/Task/{rid}", json={**_task(status), "id": rid}, headers=headers)


@pytest.mark.parametrize(
    ("before", "after", "legal"),
    [
        ("draft", "requested", True),
        ("requested", "received", True),
        ("received", "accepted", True),
        ("received", "rejected", True),
        ("accepted", "in-progress", True),
        ("in-progress", "on-hold", True),
        ("on-hold", "in-progress", True),
        ("in-progress", "completed", True),
        ("rejected", "requested", True),  # routed elsewhere
        ("requested", "completed", False),
        ("draft", "accepted", False),
        ("completed", "in-progress", False),
        ("cancelled", "requested", False),
        ("failed", "completed", False),
        ("on-hold", "completed", False),
    ],
)
def test_the_table(before, after, legal):
    assert lifecycle.allowed(before, after) is legal
    if legal:
        lifecycle.check(SYSTEM, {"status": before}, {"status": after})
    else:
        with pytest.raises(Unprocessable) as refused:
            lifecycle.check(SYSTEM, {"status": before}, {"status": after})
        assert f"from {before} to {after}" in refused.value.diagnostics


def test_an_unknown_status_and_a_new_task_that_skips_ahead_are_refused():
    doctor = Principal("d", Role.TOWNSHIP_DOCTOR, "XINGFU-THC")
    with pytest.raises(Unprocessable, match="not one this gateway tracks"):
        lifecycle.check(SYSTEM, None, {"status": "ready"})
    with pytest.raises(Unprocessable, match="starts as draft or requested"):
        lifecycle.check(doctor, None, {"status": "completed"})
    lifecycle.check(doctor, None, {"status": "requested"})
    lifecycle.check(SYSTEM, None, {"status": "received"})  # the receiving gateway's copy


def test_each_side_makes_its_own_moves():
    doctor = Principal("d", Role.TOWNSHIP_DOCTOR, "XINGFU-THC")
    specialist = Principal("s", Role.SPECIALIST, "CITY-FIRST")
    with pytest.raises(Unprocessable, match="township_doctor does not move"):
        lifecycle.check(doctor, {"status": "received"}, {"status": "accepted"})
    with pytest.raises(Unprocessable, match="specialist does not move"):
        lifecycle.check(specialist, {"status": "in-progress"}, {"status": "cancelled"})
    lifecycle.check(specialist, {"status": "received"}, {"status": "accepted"})
    lifecycle.check(doctor, {"status": "in-progress"}, {"status": "cancelled"})
    # an unchanged status is not a move (a note added, an output attached)
    lifecycle.check(doctor, {"status": "accepted"}, {"status": "accepted"})


def test_fhir_put_obeys_the_lifecycle_with_an_operation_outcome(client, as_user):
    doctor = {**as_user("doctor.xingfu"), **FHIR}
    created = client.post("/fhir/Task", json=_task("requested"), headers=doctor)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    skipped = _put(client, doctor, rid, "completed")
    assert skipped.status_code == 422
    issue = skipped.json()["issue"][0]
    assert "from requested to completed" in issue["diagnostics"]
    assert issue["expression"] == ["Task.status"]
    assert _put(client, doctor, rid, "cancelled").status_code == 200
    reopened = _put(client, doctor, rid, "requested")
    assert reopened.status_code == 422
    assert "closed" in reopened.json()["issue"][0]["diagnostics"]
    # the refusal changed nothing
    assert client.get(f"/fhir/Task/{rid}", headers=doctor).json()["status"] == "cancelled"


def test_a_transaction_bundle_cannot_slip_past_the_lifecycle(client, as_user):
    doctor = {**as_user("doctor.xingfu"), **FHIR}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": _task("completed"), "request": {"method": "POST", "url": "Task"}}],
    }
    refused = client.post("/fhir", json=bundle, headers=doctor)
    assert refused.status_code == 422, refused.text
    found = client.get("/fhir/Task", headers=doctor).json()
    assert found.get("total", 0) == 0


def test_what_a_request_is_about_and_who_has_it_cannot_be_changed_by_a_put(client, as_user):
    doctor = {**as_user("doctor.xingfu"), **FHIR}
    key = {"system": "urn:yilian:teleconsult", "value": "k-1"}
    peer = {"url": "urn:yilian:teleconsult-peer", "valueString": "CITY_FIRST"}
    body = _task("requested", identifier=[key], extension=[peer])
    rid = client.post("/fhir/Task", json=body, headers=doctor).json()["id"]
    changes = {
        "owner": {"reference": "Organization/CITY-CENTRAL"},
        "for": {"reference": "Patient/demo-li-ming"},
        "identifier": [{**key, "value": "k-2"}],
        "extension": [{**peer, "valueString": "CITY_CENTRAL"}],
    }
    for element, value in changes.items():
        changed = client.put(
            f"/fhir/Task/{rid}", json={**body, element: value, "id": rid}, headers=doctor
        )
        assert changed.status_code == 422, (element, changed.text)
        assert changed.json()["issue"][0]["expression"] == [f"Task.{element}"]
    # a note, or an identifier of the doctor's own, may still be added
    noted = {
        **body,
        "id": rid,
        "note": [{"text": "家属已同意"}],
        "identifier": [key, {"system": "urn:clinic:his", "value": "HIS-9"}],
    }
    assert client.put(f"/fhir/Task/{rid}", json=noted, headers=doctor).status_code == 200
    # the gateway itself routes it elsewhere
    moved = {**noted, "owner": {"reference": "Organization/CITY-CENTRAL"}}
    lifecycle.check(SYSTEM, noted, moved)


def test_a_task_is_cancelled_not_deleted(client, as_user):
    doctor = {**as_user("doctor.xingfu"), **FHIR}
    rid = client.post("/fhir/Task", json=_task("requested"), headers=doctor).json()["id"]
    refused = client.delete(f"/fhir/Task/{rid}", headers=doctor)
    assert refused.status_code == 422
    assert "$cancel" in refused.json()["issue"][0]["diagnostics"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"Task/{rid}"}}],
    }
    assert client.post("/fhir", json=bundle, headers=doctor).status_code == 422
    assert client.get(f"/fhir/Task/{rid}", headers=doctor).status_code == 200
