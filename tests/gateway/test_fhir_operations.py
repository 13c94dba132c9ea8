"""Transaction and batch Bundles, Patient/$everything, $match and $merge."""

from __future__ import annotations

from gateway.demo import resident_id
from records.identity import RESIDENT_ID_SYSTEM

NEW_NUMBER = resident_id("411325", "1970-01-15", "111")  # male (odd sequence)


def _new_patient(number: str = NEW_NUMBER) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": number}],
        "name": [{"text": "孙德胜", "family": "孙", "given": ["德胜"]}],
        "gender": "male",
        "birthDate": "1970-01-15",
    }


def _transaction(entries: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_transaction_resolves_urn_uuid_references_and_commits_together(client, as_user):
    auth = as_user("doctor.xingfu")
    bundle = _transaction(
        [
            {
                "fullUrl": "urn:uuid:7b0d1e4c-0000-4000-8000-000000000001",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "心率"},
                    "subject": {"reference": "urn:uuid:7b0d1e4c-0000-4000-8000-000000000002"},
                    "valueQuantity": {"value": 72, "unit": "/min"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "fullUrl": "urn:uuid:7b0d1e4c-0000-4000-8000-000000000002",
                "resource": _new_patient(),
                "request": {"method": "POST", "url": "Patient"},
            },
        ]
    )
    response = client.post("/fhir", json=bundle, headers=auth)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    obs_location = result["entry"][0]["response"]["location"]
    pat_location = result["entry"][1]["response"]["location"]
    assert result["entry"][0]["response"]["status"].startswith("201")
    pid = pat_location.split("/")[1]
    obs = client.get("/fhir/" + "/".join(obs_location.split("/")[:2]), headers=auth).json()
    assert obs["subject"] == {"reference": f"Patient/{pid}"}


def test_failed_transaction_stores_nothing(client, as_user):
    auth = as_user("doctor.xingfu")
    bad_number = NEW_NUMBER[:17] + ("1" if NEW_NUMBER[17] != "1" else "2")
    bundle = _transaction(
        [
            {
                "resource": {**_new_patient(), "name": [{"text": "第一个"}], "identifier": []},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": _new_patient(bad_number), "request": {"method": "POST", "url": "Patient"}},
        ]
    )
    response = client.post("/fhir", json=bundle, headers=auth)
    assert response.status_code == 422
    assert "Bundle.entry[1]" in response.json()["issue"][0]["diagnostics"]
    found = client.get("/fhir/Patient", params={"name": "第一个"}, headers=auth).json()
    assert found["total"] == 0


def test_batch_reports_each_entry(client, as_user):
    auth = as_user("doctor.xingfu")
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": _new_patient(), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/demo-liu-qiang"}},  # another clinic's
            {"request": {"method": "GET", "url": "Patient?name=王秀英"}},
            {"request": {"method": "DELETE", "url": "Patient/does-not-exist"}},
        ],
    }
    response = client.post("/fhir", json=bundle, headers=auth)
    assert response.status_code == 200
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses[0].startswith("201")
    assert statuses[1].startswith("404")
    assert statuses[2].startswith("200")
    assert statuses[3].startswith("404")
    search = response.json()["entry"][2]["resource"]
    assert search["total"] == 1 and search["entry"][0]["resource"]["id"] == "demo-wang-xiuying"


def test_bundle_shape_errors(client, as_user):
    auth = as_user("doctor.xingfu")
    assert client.post("/fhir", json={"resourceType": "Patient"}, headers=auth).status_code == 400
    no_method = client.post(
        "/fhir", json=_transaction([{"resource": _new_patient()}]), headers=auth
    )
    assert no_method.status_code == 400 and "entry[0].request" in no_method.text
    collection = client.post(
        "/fhir", json={"resourceType": "Bundle", "type": "collection"}, headers=auth
    )
    assert collection.status_code == 400


def test_everything_returns_the_compartment_within_access(client, as_user):
    auth = as_user("doctor.xingfu")
    bundle = client.get("/fhir/Patient/demo-wang-xiuying/$everything", headers=auth).json()
    kinds = sorted(
        e["resource"]["resourceType"] + "/" + e["resource"]["id"] for e in bundle["entry"]
    )
    assert kinds == [
        "Coverage/demo-wang-xiuying-cov",
        "Encounter/demo-wang-xiuying-enc1",
        "Observation/demo-wang-xiuying-bp1",
        "Observation/demo-wang-xiuying-glu1",
        "Patient/demo-wang-xiuying",
    ]
    assert client.get("/fhir/Patient/demo-liu-qiang/$everything", headers=auth).status_code == 404
    # the insurer may read demographics and Coverage, not the clinical part
    insurer = client.get(
        "/fhir/Patient/demo-wang-xiuying/$everything", headers=as_user("insurer.county")
    ).json()
    assert sorted(e["resource"]["resourceType"] for e in insurer["entry"]) == [
        "Coverage",
        "Patient",
    ]


def _match(client, auth, patient, **params):  # type: ignore[no-untyped-def]
    parameters = [{"name": "resource", "resource": patient}]
    for name, value in params.items():
        parameters.append({"name": name, **value})
    return client.post(
        "/fhir/Patient/$match",
        json={"resourceType": "Parameters", "parameter": parameters},
        headers=auth,
    )


def test_match_by_identifier_is_certain_and_by_demographics_is_scored(client, as_user):
    auth = as_user("doctor.xingfu")
    wang = client.get("/fhir/Patient/demo-wang-xiuying", headers=auth).json()
    by_id = _match(
        client, auth, {"resourceType": "Patient", "identifier": [wang["identifier"][0]]}
    ).json()
    assert by_id["entry"][0]["resource"]["id"] == "demo-wang-xiuying"
    assert by_id["entry"][0]["search"]["score"] == 1.0
    assert by_id["entry"][0]["search"]["extension"][0]["valueCode"] == "certain"

    probe = {
        "resourceType": "Patient",
        "name": [{"text": "王秀英"}],
        "gender": "female",
        "birthDate": "1952-03-14",
        "telecom": [{"system": "phone", "value": "139-0377-0001"}],
    }
    scored = _match(client, auth, probe).json()
    top = scored["entry"][0]
    assert top["resource"]["id"] == "demo-wang-xiuying"
    assert top["search"]["score"] >= 0.9
    assert top["search"]["extension"][0]["valueCode"] == "probable"

    typo = {**probe, "name": [{"text": "王秀瑛"}], "telecom": []}  # one character differs
    partial = _match(client, auth, typo).json()
    assert partial["entry"][0]["resource"]["id"] == "demo-wang-xiuying"
    assert 0.6 <= partial["entry"][0]["search"]["score"] < 0.9

    certain_only = _match(client, auth, probe, onlyCertainMatches={"valueBoolean": True}).json()
    assert certain_only["total"] == 0
    # a resident of another clinic is not revealed by matching
    zhang = {
        "resourceType": "Patient",
        "name": [{"text": "张桂兰"}],
        "birthDate": "1960-07-21",
        "gender": "female",
    }
    assert _match(client, auth, zhang).json()["total"] == 0


def test_merge_moves_the_compartment_and_keeps_history(client, as_user):
    auth = as_user("doctor.xingfu")
    duplicate = client.post(
        "/fhir/Patient",
        json={
            "resourceType": "Patient",
            "name": [{"text": "王秀英"}],
            "gender": "female",
            "birthDate": "1952-03-14",
        },
        headers=auth,
    ).json()
    obs = client.post(
        "/fhir/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "体温"},
            "subject": {"reference": f"Patient/{duplicate['id']}"},
            "valueQuantity": {"value": 36.8, "unit": "Cel"},
        },
        headers=auth,
    ).json()
    merged = client.post(
        "/fhir/Patient/$merge",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {
                    "name": "source-patient",
                    "valueReference": {"reference": f"Patient/{duplicate['id']}"},
                },
                {
                    "name": "target-patient",
                    "valueReference": {"reference": "Patient/demo-wang-xiuying"},
                },
            ],
        },
        headers=auth,
    )
    assert merged.status_code == 200, merged.text
    assert {
        "other": {"reference": f"Patient/{duplicate['id']}"},
        "type": "replaces",
    } in merged.json()["link"]
    source = client.get(f"/fhir/Patient/{duplicate['id']}", headers=auth).json()
    assert source["active"] is False
    assert source["link"] == [
        {"other": {"reference": "Patient/demo-wang-xiuying"}, "type": "replaced-by"}
    ]
    moved = client.get(f"/fhir/Observation/{obs['id']}", headers=auth).json()
    assert moved["subject"] == {"reference": "Patient/demo-wang-xiuying"}
    first = client.get(f"/fhir/Observation/{obs['id']}/_history/1", headers=auth).json()
    assert first["subject"] == {"reference": f"Patient/{duplicate['id']}"}
    everything = client.get("/fhir/Patient/demo-wang-xiuying/$everything", headers=auth).json()
    assert obs["id"] in {e["resource"]["id"] for e in everything["entry"]}
