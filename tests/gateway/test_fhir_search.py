"""FHIR search over HTTP: the parameter kinds, paging, sorting, includes and _summary=count."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from records.identity import RESIDENT_ID_SYSTEM

SYSTEM_AUTH = None  # filled per test through as_user


def _ids(bundle):  # type: ignore[no-untyped-def]
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_patient_search_by_identifier_name_birthdate_gender(client, as_user):
    auth = as_user("doctor.xingfu")
    wang = client.get("/fhir/Patient/demo-wang-xiuying", headers=auth).json()
    number = next(i["value"] for i in wang["identifier"] if i["system"] == RESIDENT_ID_SYSTEM)

    by_ident = client.get(
        "/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{number}"}, headers=auth
    ).json()
    assert _ids(by_ident) == ["demo-wang-xiuying"] and by_ident["total"] == 1
    by_code_only = client.get("/fhir/Patient", params={"identifier": number}, headers=auth).json()
    assert _ids(by_code_only) == ["demo-wang-xiuying"]
    wrong_system = client.get(
        "/fhir/Patient", params={"identifier": f"urn:other|{number}"}, headers=auth
    ).json()
    assert wrong_system["total"] == 0

    assert _ids(client.get("/fhir/Patient", params={"name": "王秀英"}, headers=auth).json()) == [
        "demo-wang-xiuying"
    ]
    # a prefix of the family name finds both residents surnamed 李/王 in the clinic
    assert _ids(client.get("/fhir/Patient", params={"name": "王"}, headers=auth).json()) == [
        "demo-wang-xiuying"
    ]
    assert _ids(
        client.get("/fhir/Patient", params={"name:contains": "秀"}, headers=auth).json()
    ) == ["demo-wang-xiuying"]
    assert (
        client.get("/fhir/Patient", params={"name:exact": "王秀"}, headers=auth).json()["total"]
        == 0
    )
    assert _ids(
        client.get("/fhir/Patient", params={"birthdate": "1952-03-14"}, headers=auth).json()
    ) == ["demo-wang-xiuying"]
    assert _ids(client.get("/fhir/Patient", params={"birthdate": "1952"}, headers=auth).json()) == [
        "demo-wang-xiuying"
    ]
    older = client.get("/fhir/Patient", params={"birthdate": "lt1950-01-01"}, headers=auth).json()
    assert _ids(older) == ["demo-li-jianguo"]
    males = client.get(
        "/fhir/Patient", params={"gender": "male", "_sort": "birthdate"}, headers=auth
    ).json()
    assert _ids(males) == ["demo-li-jianguo", "demo-chen-xiaoming"]
    both = client.get(
        "/fhir/Patient",
        params={"_id": "demo-li-jianguo,demo-wang-xiuying", "_sort": "-birthdate"},
        headers=auth,
    ).json()
    assert _ids(both) == ["demo-wang-xiuying", "demo-li-jianguo"]


def test_clinical_search_by_subject_code_date_status_category(client, as_user):
    auth = as_user("doctor.xingfu")
    get = lambda **p: client.get("/fhir/Observation", params=p, headers=auth).json()  # noqa: E731
    assert sorted(_ids(get(subject="Patient/demo-wang-xiuying"))) == [
        "demo-wang-xiuying-bp1",
        "demo-wang-xiuying-glu1",
    ]
    assert sorted(_ids(get(patient="demo-wang-xiuying"))) == [
        "demo-wang-xiuying-bp1",
        "demo-wang-xiuying-glu1",
    ]
    assert _ids(get(patient="demo-wang-xiuying", code="http://loinc.org|1558-6")) == [
        "demo-wang-xiuying-glu1"
    ]
    assert _ids(get(patient="demo-wang-xiuying", category="vital-signs")) == [
        "demo-wang-xiuying-bp1"
    ]
    assert get(patient="demo-wang-xiuying", status="preliminary")["total"] == 0
    # 09:05 +08:00 is 01:05 UTC on the same day
    assert _ids(
        get(patient="demo-wang-xiuying", date="ge2026-10-08T01:00:00Z", code="85354-9")
    ) == ["demo-wang-xiuying-bp1"]
    assert get(patient="demo-wang-xiuying", date="gt2026-10-09")["total"] == 0
    assert get(patient="demo-wang-xiuying", _lastUpdated="gt2000-01-01")["total"] == 2
    assert get(patient="demo-wang-xiuying", _lastUpdated="lt2000-01-01")["total"] == 0


def test_paging_links_and_summary_count(client, as_user):
    auth = as_user("doctor.xingfu")
    first = client.get(
        "/fhir/Observation", params={"_count": "2", "_sort": "_id"}, headers=auth
    ).json()
    assert first["total"] == 6 and len(_ids(first)) == 2
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert "previous" not in links
    seen = _ids(first)
    url = links["next"]
    while url:
        parts = urlsplit(url)
        page = client.get(parts.path, params=parse_qs(parts.query), headers=auth).json()
        seen += _ids(page)
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == 6 and seen == sorted(seen)
    count = client.get("/fhir/Observation", params={"_summary": "count"}, headers=auth).json()
    assert count["total"] == 6 and "entry" not in count


def test_include_and_revinclude(client, as_user):
    auth = as_user("doctor.xingfu")
    bundle = client.get(
        "/fhir/Observation",
        params={"_id": "demo-wang-xiuying-bp1", "_include": "Observation:subject"},
        headers=auth,
    ).json()
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]}
    assert modes == {("Observation", "match"), ("Patient", "include")}
    rev = client.get(
        "/fhir/Patient",
        params={"_id": "demo-wang-xiuying", "_revinclude": "Observation:subject"},
        headers=auth,
    ).json()
    included = sorted(e["resource"]["id"] for e in rev["entry"] if e["search"]["mode"] == "include")
    assert included == ["demo-wang-xiuying-bp1", "demo-wang-xiuying-glu1"]
    bad = client.get("/fhir/Patient", params={"_include": "Patient:nothing"}, headers=auth)
    assert bad.status_code == 400


def test_includes_respect_access(client, as_user):
    """A resident's revinclude cannot pull in another resident's resources."""
    auth = as_user("resident.wang")
    rev = client.get(
        "/fhir/Organization",
        params={"_id": "XINGFU-THC", "_revinclude": "Patient:organization"},
        headers=auth,
    ).json()
    included = {e["resource"]["id"] for e in rev["entry"] if e["search"]["mode"] == "include"}
    assert included == {"demo-wang-xiuying"}


def test_bad_search_input_gets_clear_answers(client, as_user):
    auth = as_user("doctor.xingfu")
    unknown = client.get("/fhir/Patient", params={"shoe-size": "42"}, headers=auth)
    assert unknown.status_code == 400 and "shoe-size" in unknown.json()["issue"][0]["diagnostics"]
    lenient = client.get(
        "/fhir/Patient", params={"shoe-size": "42"}, headers={**auth, "Prefer": "handling=lenient"}
    )
    assert lenient.status_code == 200
    assert "shoe-size" not in lenient.json()["link"][0]["url"]
    bad_date = client.get("/fhir/Patient", params={"birthdate": "yesterday"}, headers=auth)
    assert bad_date.status_code == 400 and "birthdate" in bad_date.text
    bad_count = client.get("/fhir/Patient", params={"_count": "many"}, headers=auth)
    assert bad_count.status_code == 400
    bad_sort = client.get("/fhir/Patient", params={"_sort": "shoe-size"}, headers=auth)
    assert bad_sort.status_code == 400


def test_post_search_matches_get(client, as_user):
    auth = as_user("doctor.xingfu")
    posted = client.post("/fhir/Patient/_search", data={"name": "李建国"}, headers=auth).json()
    assert _ids(posted) == ["demo-li-jianguo"]
