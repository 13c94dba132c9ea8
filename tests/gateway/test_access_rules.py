"""The access rules over HTTP, with the demo consortium: who sees what, and what is refused.

A row outside a principal's reach answers 404 (it does not exist for them); a type the role may
not touch at all answers 403. Every refusal is itself audited.
"""

from __future__ import annotations

import json

from sqlalchemy import select

from records.fhirtypes import organization_id
from records.schema import audit_record
from security.principal import SYSTEM

FHIR = {"Content-Type": "application/fhir+json"}
WANG = "demo-wang-xiuying"
ZHANG = "demo-zhang-guilan"
LIU = "demo-liu-qiang"
XINGFU_PATIENTS = {WANG, "demo-li-jianguo", "demo-chen-xiaoming"}
ALL_PATIENTS = XINGFU_PATIENTS | {ZHANG, LIU}
# Consortium members are named by codes (XINGFU_THC); their FHIR ids are the codes with '-'.
XINGFU_THC = organization_id("XINGFU_THC")
CITY_FIRST = organization_id("CITY_FIRST")
CITY_CENTRAL = organization_id("CITY_CENTRAL")
COUNTY_MI = organization_id("COUNTY_MI")


def _ids(bundle: dict) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def _search(client, headers, rtype: str, **params) -> dict:  # type: ignore[no-untyped-def]
    response = client.get(f"/fhir/{rtype}", params={"_count": "100", **params}, headers=headers)
    assert response.status_code == 200, response.text
    bundle: dict = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle


def _service_request(pid: str, **extra) -> dict:  # type: ignore[no-untyped-def]
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {"text": "远程心电诊断"},
        "subject": {"reference": f"Patient/{pid}"},
        **extra,
    }


def _observation(pid: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "心率"},
        "subject": {"reference": f"Patient/{pid}"},
        "valueQuantity": {
            "value": 72,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def _claim(pid: str, insurer: str) -> dict:
    return {
        "resourceType": "Claim",
        "status": "active",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/claim-type",
                    "code": "professional",
                }
            ]
        },
        "use": "claim",
        "patient": {"reference": f"Patient/{pid}"},
        "created": "2026-10-09",
        "insurer": {"reference": f"Organization/{insurer}"},
        "provider": {"reference": f"Organization/{XINGFU_THC}"},
        "priority": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/processpriority",
                    "code": "normal",
                }
            ]
        },
        "insurance": [
            {"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/{pid}-cov"}}
        ],
    }


def _audit_rows(ctx, **where):  # type: ignore[no-untyped-def]
    stmt = select(audit_record)
    for column, value in where.items():
        stmt = stmt.where(getattr(audit_record.c, column) == value)
    with ctx.engine.connect() as conn:
        return conn.execute(stmt.order_by(audit_record.c.seq)).all()


# -- residents ------------------------------------------------------------------------------------


def test_resident_reads_her_own_record_and_searches_only_hers(client, as_user):
    auth = as_user("resident.wang")
    me = client.get(f"/fhir/Patient/{WANG}", headers=auth)
    assert me.status_code == 200, me.text
    assert me.json()["name"][0]["text"] == "王秀英"
    for oid in (f"{WANG}-bp1", f"{WANG}-glu1"):
        obs = client.get(f"/fhir/Observation/{oid}", headers=auth)
        assert obs.status_code == 200, obs.text
        assert obs.json()["subject"] == {"reference": f"Patient/{WANG}"}

    observations = _search(client, auth, "Observation")
    assert observations["total"] == 2
    assert _ids(observations) == {f"{WANG}-bp1", f"{WANG}-glu1"}
    assert all(
        e["resource"]["subject"]["reference"] == f"Patient/{WANG}" for e in observations["entry"]
    )
    patients = _search(client, auth, "Patient")
    assert _ids(patients) == {WANG} and patients["total"] == 1


def test_resident_cannot_see_another_resident_not_even_that_she_exists(client, as_user):
    auth = as_user("resident.wang")
    for url in (
        f"/fhir/Patient/{ZHANG}",
        f"/fhir/Observation/{ZHANG}-bp1",
        f"/fhir/Encounter/{ZHANG}-enc1",
        f"/fhir/Coverage/{ZHANG}-cov",
    ):
        response = client.get(url, headers=auth)
        # the same answer as for an id that does not exist at all
        assert response.status_code == 404, (url, response.status_code)
        assert response.json()["issue"][0]["code"] == "not-found"
    nonexistent = client.get("/fhir/Patient/no-such-resident", headers=auth)
    assert nonexistent.status_code == 404

    by_name = _search(client, auth, "Patient", name="张桂兰")
    assert by_name["total"] == 0 and not by_name.get("entry")
    by_subject = _search(client, auth, "Observation", subject=f"Patient/{ZHANG}")
    assert by_subject["total"] == 0
    # the other resident herself sees her record, so the data is there
    zhang = as_user("resident.zhang")
    assert client.get(f"/fhir/Patient/{ZHANG}", headers=zhang).status_code == 200


def test_resident_cannot_write(client, as_user):
    auth = {**as_user("resident.wang"), **FHIR}
    created = client.post("/fhir/Observation", json=_observation(WANG), headers=auth)
    assert created.status_code == 403, created.text
    assert created.json()["issue"][0]["code"] == "forbidden"
    own = client.get(f"/fhir/Patient/{WANG}", headers=auth).json()
    changed = {**own, "telecom": [{"system": "phone", "value": "13900000009"}]}
    assert client.put(f"/fhir/Patient/{WANG}", json=changed, headers=auth).status_code == 403
    assert client.delete(f"/fhir/Observation/{WANG}-bp1", headers=auth).status_code == 403
    # nothing was written
    assert _search(client, auth, "Observation")["total"] == 2


# -- township doctor ------------------------------------------------------------------------------


def test_doctor_sees_the_patients_of_his_clinic_only(client, as_user):
    auth = as_user("doctor.xingfu")
    for pid in XINGFU_PATIENTS:
        assert client.get(f"/fhir/Patient/{pid}", headers=auth).status_code == 200, pid
    assert client.get(f"/fhir/Observation/{WANG}-bp1", headers=auth).status_code == 200
    assert client.get(f"/fhir/Patient/{LIU}", headers=auth).status_code == 404
    assert client.get(f"/fhir/Observation/{LIU}-bp1", headers=auth).status_code == 404
    assert client.get(f"/fhir/Patient/{ZHANG}", headers=auth).status_code == 404

    patients = _search(client, auth, "Patient")
    assert _ids(patients) == XINGFU_PATIENTS and patients["total"] == 3
    for entry in patients["entry"]:
        managing = entry["resource"]["managingOrganization"]
        assert managing == {"reference": f"Organization/{XINGFU_THC}"}
    observations = _search(client, auth, "Observation")
    assert {e["resource"]["subject"]["reference"] for e in observations["entry"]} == {
        f"Patient/{pid}" for pid in XINGFU_PATIENTS
    }


def test_doctor_reaches_a_patient_he_has_a_request_for(client, as_user, ctx):
    auth = {**as_user("doctor.xingfu"), **FHIR}
    before = client.post("/fhir/Observation", json=_observation(LIU), headers=auth)
    assert before.status_code in (403, 404), before.text
    assert client.get(f"/fhir/Patient/{LIU}", headers=auth).status_code == 404
    # the refused write left nothing behind
    system_view = ctx.records.search(SYSTEM, "Observation", [("subject", f"Patient/{LIU}")])
    assert system_view.total == 2

    ctx.records.create(
        SYSTEM,
        "ServiceRequest",
        _service_request(LIU, requester={"reference": "Practitioner/doctor-xingfu"}),
    )
    now = client.get(f"/fhir/Patient/{LIU}", headers=auth)
    assert now.status_code == 200, now.text
    assert now.json()["name"][0]["text"] == "刘强"
    assert client.get(f"/fhir/Observation/{LIU}-bp1", headers=auth).status_code == 200
    assert LIU in _ids(_search(client, auth, "Patient"))
    after = client.post("/fhir/Observation", json=_observation(LIU), headers=auth)
    assert after.status_code == 201, after.text
    # a request by someone else does not open demo-zhang-guilan to him
    ctx.records.create(
        SYSTEM,
        "ServiceRequest",
        _service_request(ZHANG, requester={"reference": "Practitioner/specialist-city"}),
    )
    assert client.get(f"/fhir/Patient/{ZHANG}", headers=auth).status_code == 404


def test_doctor_cannot_write_the_directory(client, as_user):
    auth = {**as_user("doctor.xingfu"), **FHIR}
    assert client.get(f"/fhir/Organization/{XINGFU_THC}", headers=auth).status_code == 200
    org = {"resourceType": "Organization", "name": "私人诊所"}
    assert client.post("/fhir/Organization", json=org, headers=auth).status_code == 403
    own = client.get(f"/fhir/Organization/{XINGFU_THC}", headers=auth).json()
    renamed = {**own, "name": "幸福镇中心卫生院"}
    url = f"/fhir/Organization/{XINGFU_THC}"
    assert client.put(url, json=renamed, headers=auth).status_code == 403
    assert client.get(url, headers=auth).json()["name"] == "幸福镇卫生院"


# -- city specialist ------------------------------------------------------------------------------


def test_specialist_sees_a_patient_once_a_request_is_routed_to_his_hospital(client, as_user, ctx):
    auth = as_user("specialist.city")
    assert client.get(f"/fhir/Patient/{WANG}", headers=auth).status_code == 404
    assert _search(client, auth, "Patient")["total"] == 0
    # a request routed to another hospital opens nothing
    elsewhere = [{"reference": f"Organization/{CITY_CENTRAL}"}]
    ctx.records.create(SYSTEM, "ServiceRequest", _service_request(WANG, performer=elsewhere))
    assert client.get(f"/fhir/Patient/{WANG}", headers=auth).status_code == 404

    here = [{"reference": f"Organization/{CITY_FIRST}"}]
    ctx.records.create(SYSTEM, "ServiceRequest", _service_request(WANG, performer=here))
    assert client.get(f"/fhir/Patient/{WANG}", headers=auth).status_code == 200
    assert client.get(f"/fhir/Observation/{WANG}-glu1", headers=auth).status_code == 200
    assert _ids(_search(client, auth, "Patient")) == {WANG}
    # others are still out of reach
    assert client.get(f"/fhir/Patient/{ZHANG}", headers=auth).status_code == 404


def test_specialist_sees_a_patient_through_a_task_owned_by_his_hospital(client, as_user, ctx):
    auth = as_user("specialist.city")
    assert client.get(f"/fhir/Patient/{ZHANG}", headers=auth).status_code == 404
    ctx.records.create(
        SYSTEM,
        "Task",
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "for": {"reference": f"Patient/{ZHANG}"},
            "owner": {"reference": f"Organization/{CITY_FIRST}"},
        },
    )
    assert client.get(f"/fhir/Patient/{ZHANG}", headers=auth).status_code == 200
    assert client.get(f"/fhir/Encounter/{ZHANG}-enc1", headers=auth).status_code == 200
    assert client.get(f"/fhir/Patient/{LIU}", headers=auth).status_code == 404


# -- insurer --------------------------------------------------------------------------------------


def test_insurer_reads_coverage_and_demographics_of_the_insured(client, as_user, ctx):
    auth = as_user("insurer.county")
    coverages = _search(client, auth, "Coverage")
    assert _ids(coverages) == {f"{pid}-cov" for pid in ALL_PATIENTS}
    assert client.get(f"/fhir/Coverage/{ZHANG}-cov", headers=auth).status_code == 200
    patient = client.get(f"/fhir/Patient/{WANG}", headers=auth)
    assert patient.status_code == 200, patient.text
    assert patient.json()["birthDate"] == "1952-03-14"
    assert _ids(_search(client, auth, "Patient")) == ALL_PATIENTS

    for rtype in ("Observation", "Encounter"):
        refused = client.get(f"/fhir/{rtype}", headers=auth)
        assert refused.status_code == 403, (rtype, refused.text)
        assert refused.json()["issue"][0]["code"] == "forbidden"
    assert client.get(f"/fhir/Observation/{WANG}-bp1", headers=auth).status_code == 403


def test_insurer_does_not_see_uninsured_patients(client, as_user, ctx):
    auth = {**as_user("doctor.xingfu"), **FHIR}
    body = {
        "resourceType": "Patient",
        "gender": "female",
        "birthDate": "1958-04-03",
        "name": [{"text": "赵淑芬", "family": "赵", "given": ["淑芬"]}],
    }
    pid = client.post("/fhir/Patient", json=body, headers=auth).json()["id"]
    insurer = as_user("insurer.county")
    assert client.get(f"/fhir/Patient/{pid}", headers=insurer).status_code == 404
    assert pid not in _ids(_search(client, insurer, "Patient"))


def test_insurer_does_not_see_claims_addressed_to_another_insurer(client, as_user, ctx):
    ours, _ = ctx.records.create(SYSTEM, "Claim", _claim(WANG, COUNTY_MI))
    theirs, _ = ctx.records.create(SYSTEM, "Claim", _claim(ZHANG, CITY_CENTRAL))
    auth = as_user("insurer.county")
    claims = _search(client, auth, "Claim")
    assert _ids(claims) == {ours.res_id} and claims["total"] == 1
    assert client.get(f"/fhir/Claim/{ours.res_id}", headers=auth).status_code == 200
    assert client.get(f"/fhir/Claim/{theirs.res_id}", headers=auth).status_code == 404


# -- administrator --------------------------------------------------------------------------------


def test_admin_manages_the_directory_and_reads_no_clinical_data(client, as_user):
    auth = {**as_user("admin"), **FHIR}
    for url in (
        f"/fhir/Patient/{WANG}",
        "/fhir/Patient",
        f"/fhir/Observation/{WANG}-bp1",
        "/fhir/Observation",
    ):
        refused = client.get(url, headers=auth)
        assert refused.status_code == 403, (url, refused.status_code)
    assert client.get(f"/fhir/Organization/{CITY_FIRST}", headers=auth).status_code == 200
    orgs = _search(client, auth, "Organization")
    assert {XINGFU_THC, CITY_FIRST, COUNTY_MI} <= _ids(orgs)
    audit = _search(client, auth, "AuditEvent")
    assert audit["total"] >= 1

    new_org = {
        "resourceType": "Organization",
        "name": "南湾村卫生室",
        "active": True,
        "partOf": {"reference": f"Organization/{XINGFU_THC}"},
    }
    created = client.post("/fhir/Organization", json=new_org, headers=auth)
    assert created.status_code == 201, created.text
    oid = created.json()["id"]
    assert client.get(f"/fhir/Organization/{oid}", headers=auth).json()["name"] == "南湾村卫生室"


def test_admin_cannot_read_clinical_data_through_system_history(client, as_user):
    auth = as_user("admin")
    response = client.get("/fhir/_history", headers=auth)
    assert response.status_code == 403, [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in response.json().get("entry", [])
        if "resource" in e
    ][:5]


# -- AuditEvent -----------------------------------------------------------------------------------


def test_resident_reads_only_audit_events_about_herself(client, as_user):
    wang = as_user("resident.wang")
    doctor = as_user("doctor.xingfu")
    # events about her, about others, and about nobody in particular
    assert client.get(f"/fhir/Patient/{WANG}", headers=doctor).status_code == 200
    assert client.get("/fhir/Patient/demo-li-jianguo", headers=doctor).status_code == 200
    zhang = as_user("resident.zhang")
    assert client.get(f"/fhir/Patient/{ZHANG}", headers=zhang).status_code == 200
    assert client.get(f"/fhir/Observation/{WANG}-bp1", headers=wang).status_code == 200

    bundle = _search(client, wang, "AuditEvent")
    assert bundle["total"] >= 2
    actors = set()
    for entry in bundle["entry"]:
        event = entry["resource"]
        refs = [e["what"].get("reference") for e in event.get("entity", [])]
        assert f"Patient/{WANG}" in refs, refs
        actors.add(event["agent"][0]["who"]["identifier"]["value"])
    # she sees who looked at her record: the doctor and herself
    assert {"doctor.xingfu", "resident.wang"} <= actors
    own_id = bundle["entry"][0]["resource"]["id"]
    assert client.get(f"/fhir/AuditEvent/{own_id}", headers=wang).status_code == 200

    # a single event about someone else is not there for her
    zhang_events = _search(client, as_user("admin"), "AuditEvent", patient=f"Patient/{ZHANG}")
    assert zhang_events["total"] >= 1
    other_id = zhang_events["entry"][0]["resource"]["id"]
    assert client.get(f"/fhir/AuditEvent/{other_id}", headers=wang).status_code == 404
    assert _search(client, wang, "AuditEvent", patient=f"Patient/{ZHANG}")["total"] == 0


def test_resident_audit_events_do_not_name_other_residents(client, as_user):
    # the doctor searches his clinic's patients: one audit record per patient touched
    _search(client, as_user("doctor.xingfu"), "Patient")
    bundle = _search(client, as_user("resident.wang"), "AuditEvent")
    assert bundle["total"] >= 1
    others = XINGFU_PATIENTS - {WANG}
    named = {
        ref
        for entry in bundle["entry"]
        for ent in entry["resource"].get("entity", [])
        for ref in [ent["what"].get("reference", "")]
        if any(pid in ref for pid in others)
    }
    assert named == set()


def test_doctor_may_not_read_audit_events(client, as_user):
    auth = as_user("doctor.xingfu")
    assert client.get("/fhir/AuditEvent", headers=auth).status_code == 403
    assert client.get("/fhir/AuditEvent/1", headers=auth).status_code == 403
    assert client.get("/fhir/AuditEvent", headers=as_user("insurer.county")).status_code == 403


# -- refusals are audited -------------------------------------------------------------------------


def test_a_resident_404_is_in_the_audit_log(client, as_user, ctx):
    wang = as_user("resident.wang")
    assert client.get(f"/fhir/Patient/{ZHANG}", headers=wang).status_code == 404

    rows = _audit_rows(ctx, actor="resident.wang", outcome="refused")
    assert len(rows) == 1
    assert rows[0].action == "read" and f"Patient/{ZHANG}" in json.loads(rows[0].resources)

    bundle = _search(client, as_user("admin"), "AuditEvent", outcome="4", agent="resident.wang")
    assert bundle["total"] == 1
    event = bundle["entry"][0]["resource"]
    assert event["outcome"] == "4"
    assert event["agent"][0]["who"]["identifier"]["value"] == "resident.wang"
    assert {"reference": f"Patient/{ZHANG}"} in [e["what"] for e in event.get("entity", [])]
    # the refusal does not show up as an event about her for the other resident
    zhang_view = _search(client, as_user("resident.zhang"), "AuditEvent", agent="resident.wang")
    assert zhang_view["total"] == 0


def test_every_403_is_in_the_audit_log(client, as_user, ctx):
    attempts = [
        ("resident.wang", "POST", "/fhir/Observation", _observation(WANG)),
        ("doctor.xingfu", "GET", "/fhir/AuditEvent", None),
        (
            "doctor.xingfu",
            "POST",
            "/fhir/Organization",
            {"resourceType": "Organization", "name": "x"},
        ),
        ("insurer.county", "GET", "/fhir/Observation", None),
        ("admin", "GET", f"/fhir/Patient/{WANG}", None),
        ("doctor.xingfu", "POST", "/fhir/Observation", _observation(LIU)),
    ]
    for username, method, url, body in attempts:
        headers = {**as_user(username), **FHIR}
        response = client.request(method, url, json=body, headers=headers)
        assert response.status_code in (403, 404), (username, url, response.status_code)
        refused = _audit_rows(ctx, actor=username, outcome="refused")
        assert refused, (username, url)
        assert refused[-1].detail, "a refusal says why"

    admin = as_user("admin")
    all_refused = _search(client, admin, "AuditEvent", outcome="4")
    agents = {e["resource"]["agent"][0]["who"]["identifier"]["value"] for e in all_refused["entry"]}
    assert agents == {"resident.wang", "doctor.xingfu", "insurer.county", "admin"}
    assert all_refused["total"] == len(attempts)
    successes = _search(client, admin, "AuditEvent", outcome="0", agent="admin")
    assert all(e["resource"]["outcome"] == "0" for e in successes["entry"])
