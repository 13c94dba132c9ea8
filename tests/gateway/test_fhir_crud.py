"""FHIR REST interactions over HTTP: create, read, vread, update, delete, history, conditional."""

from __future__ import annotations

from gateway.demo import resident_id
from records.identity import RESIDENT_ID_SYSTEM

FHIR = {"Content-Type": "application/fhir+json"}


def _patient(number: str | None = None, **extra):  # type: ignore[no-untyped-def]
    body = {
        "resourceType": "Patient",
        "name": [{"text": "赵淑芬", "family": "赵", "given": ["淑芬"]}],
        "gender": "female",
        "birthDate": "1958-04-03",
        "address": [{"text": "幸福镇杏花村七组", "line": ["杏花村七组"]}],
        **extra,
    }
    if number:
        body["identifier"] = [{"system": RESIDENT_ID_SYSTEM, "value": number}]
    return body


def test_create_read_update_history_vread(client, as_user):
    auth = {**as_user("doctor.xingfu"), **FHIR}
    number = resident_id("411325", "1958-04-03", "062")
    created = client.post("/fhir/Patient", json=_patient(number), headers=auth)
    assert created.status_code == 201, created.text
    body = created.json()
    pid = body["id"]
    assert created.headers["etag"] == 'W/"1"'
    assert created.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    assert body["meta"]["versionId"] == "1"
    # the township doctor's clinic becomes the managing organization
    assert body["managingOrganization"] == {"reference": "Organization/XINGFU-THC"}

    read = client.get(f"/fhir/Patient/{pid}", headers=auth)
    assert read.status_code == 200
    # Chinese text round-trips byte for byte
    assert "赵淑芬".encode() in read.content and "幸福镇杏花村七组".encode() in read.content
    assert read.json()["name"][0]["text"] == "赵淑芬"

    changed = {**read.json(), "telecom": [{"system": "phone", "value": "13900000001"}]}
    stale = client.put(f"/fhir/Patient/{pid}", json=changed, headers={**auth, "If-Match": 'W/"7"'})
    assert stale.status_code == 412
    updated = client.put(
        f"/fhir/Patient/{pid}", json=changed, headers={**auth, "If-Match": 'W/"1"'}
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["meta"]["versionId"] == "2"

    history = client.get(f"/fhir/Patient/{pid}/_history", headers=auth).json()
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    first = client.get(f"/fhir/Patient/{pid}/_history/1", headers=auth)
    assert first.status_code == 200 and "telecom" not in first.json()
    assert client.get(f"/fhir/Patient/{pid}/_history/9", headers=auth).status_code == 404


def test_delete_then_read_is_gone_and_history_keeps_versions(client, as_user):
    auth = {**as_user("doctor.xingfu"), **FHIR}
    pid = client.post("/fhir/Patient", json=_patient(), headers=auth).json()["id"]
    assert client.delete(f"/fhir/Patient/{pid}", headers=auth).status_code == 204
    gone = client.get(f"/fhir/Patient/{pid}", headers=auth)
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    versions = client.get(f"/fhir/Patient/{pid}/_history", headers=auth).json()["entry"]
    assert versions[0]["request"]["method"] == "DELETE" and "resource" not in versions[0]
    assert versions[1]["resource"]["name"][0]["text"] == "赵淑芬"
    assert client.get("/fhir/Patient/no-such-id", headers=auth).status_code == 404


def test_invalid_resident_id_is_refused_naming_field_and_reason(client, as_user):
    auth = {**as_user("doctor.xingfu"), **FHIR}
    good = resident_id("411325", "1958-04-03", "062")
    wrong_check = good[:17] + ("0" if good[17] != "0" else "1")
    response = client.post("/fhir/Patient", json=_patient(wrong_check), headers=auth)
    assert response.status_code == 422
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["Patient.identifier[0].value"]
    assert "check character" in issue["diagnostics"]

    other_birth = client.post(
        "/fhir/Patient", json={**_patient(good), "birthDate": "1958-04-04"}, headers=auth
    )
    assert other_birth.status_code == 422
    assert "Patient.birthDate" in other_birth.json()["issue"][0]["expression"]

    wrong_sex = client.post(
        "/fhir/Patient", json={**_patient(good), "gender": "male"}, headers=auth
    )
    assert wrong_sex.status_code == 422
    assert "Patient.gender" in wrong_sex.json()["issue"][0]["expression"]

    # nothing of the refused attempts was stored
    found = client.get("/fhir/Patient", params={"name": "赵淑芬"}, headers=auth).json()
    assert found["total"] == 0


def test_structural_errors_are_operation_outcomes(client, as_user):
    auth = {**as_user("doctor.xingfu"), **FHIR}
    not_json = client.post("/fhir/Patient", content=b"{not json", headers=auth)
    assert not_json.status_code == 400 and "not valid JSON" in not_json.text
    wrong_type = client.post("/fhir/Patient", json={"resourceType": "Observation"}, headers=auth)
    assert wrong_type.status_code == 400
    bad_date = client.post(
        "/fhir/Patient", json={"resourceType": "Patient", "birthDate": "1958-13-40"}, headers=auth
    )
    assert bad_date.status_code == 422
    assert bad_date.json()["issue"][0]["expression"] == ["Patient.birthDate"]
    unknown_element = client.post(
        "/fhir/Patient", json={"resourceType": "Patient", "nickname": "x"}, headers=auth
    )
    assert unknown_element.status_code == 422
    unknown_type = client.get("/fhir/Spaceship", headers=auth)
    assert unknown_type.status_code == 400
    id_mismatch = client.put(
        "/fhir/Patient/abc", json={"resourceType": "Patient", "id": "xyz"}, headers=auth
    )
    assert id_mismatch.status_code == 400


def test_conditional_create_returns_existing(client, as_user):
    auth = {**as_user("doctor.xingfu"), **FHIR}
    number = resident_id("411325", "1958-04-03", "062")
    condition = {"If-None-Exist": f"identifier={RESIDENT_ID_SYSTEM}|{number}"}
    first = client.post("/fhir/Patient", json=_patient(number), headers={**auth, **condition})
    assert first.status_code == 201
    second = client.post("/fhir/Patient", json=_patient(number), headers={**auth, **condition})
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    # without the condition the same identity number is a conflict, not a duplicate resident
    duplicate = client.post("/fhir/Patient", json=_patient(number), headers=auth)
    assert duplicate.status_code == 409


def test_metadata_is_public_and_lists_what_is_implemented(client):
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    statement = response.json()
    assert statement["fhirVersion"] == "4.0.1"
    types = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for required in [
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Endpoint",
        "HealthcareService",
        "Encounter",
        "Observation",
        "DiagnosticReport",
        "ServiceRequest",
        "Task",
        "ImagingStudy",
        "DocumentReference",
        "Appointment",
        "Coverage",
        "Claim",
        "ClaimResponse",
        "Consent",
        "Provenance",
        "Binary",
        "AuditEvent",
    ]:
        assert required in types
    audit_interactions = {i["code"] for i in types["AuditEvent"]["interaction"]}
    assert audit_interactions == {"read", "search-type"}
    patient_params = {p["name"] for p in types["Patient"]["searchParam"]}
    assert {"identifier", "name", "birthdate", "gender", "_id", "_lastUpdated"} <= patient_params


def test_every_fhir_call_needs_a_token(client, demo):
    for method, url in [
        ("GET", "/fhir/Patient"),
        ("GET", "/fhir/Patient/x"),
        ("POST", "/fhir/Patient"),
        ("POST", "/fhir"),
    ]:
        response = client.request(method, url)
        assert response.status_code == 401, url
        assert response.headers["www-authenticate"].startswith("Bearer")
    bad = client.get("/fhir/Patient", headers={"Authorization": "Bearer not.a.token"})
    assert bad.status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["status"] == "ready"


def test_binary_is_served_natively_when_asked(client, as_user):
    import base64

    auth = {**as_user("doctor.xingfu"), **FHIR}
    pdf = b"%PDF-1.4\n% \xe5\xbf\x83\xe7\x94\xb5\xe5\x9b\xbe report\n"
    created = client.post(
        "/fhir/Binary",
        json={
            "resourceType": "Binary",
            "contentType": "application/pdf",
            "securityContext": {"reference": "Patient/demo-wang-xiuying"},
            "data": base64.b64encode(pdf).decode(),
        },
        headers=auth,
    )
    assert created.status_code == 201, created.text
    bid = created.json()["id"]
    native = client.get(f"/fhir/Binary/{bid}", headers={**auth, "Accept": "application/pdf"})
    assert native.status_code == 200
    assert native.headers["content-type"] == "application/pdf" and native.content == pdf
    as_fhir = client.get(f"/fhir/Binary/{bid}", headers={**auth, "Accept": "application/fhir+json"})
    assert as_fhir.json()["resourceType"] == "Binary"
    # the Binary belongs to 王秀英's compartment: another resident cannot read it
    other = client.get(f"/fhir/Binary/{bid}", headers=as_user("resident.zhang"))
    assert other.status_code == 404
    own = client.get(f"/fhir/Binary/{bid}", headers=as_user("resident.wang"))
    assert own.status_code == 200
