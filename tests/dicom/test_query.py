"""The query engine behind C-FIND and QIDO-RS, over the index the ``filed`` fixture fills
(tests/dicom/conftest.py)."""

from __future__ import annotations

import json

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom import query
from dicom.index import Headers
from dicom.query import Query, QueryError
from gateway.context import Context
from records import db
from records.schema import dicom_instance
from security.access import PatientSet, Scope
from tests.dicom.conftest import IR58_STUDY

c = dicom_instance.c


def find(ctx: Context, level: str, visible=None, **keys):  # type: ignore[no-untyped-def]
    options = {k: keys.pop(k) for k in ("fuzzy", "limit", "offset", "wanted") if k in keys}
    with db.reader(ctx.engine).connect() as conn:
        return query.search(
            conn, Query(level, keys, **options), visible, Headers(ctx.engine, ctx.dicom.store)
        )


def studies(ctx: Context, **keys: str) -> set[str]:
    return {m.values["StudyInstanceUID"] for m in find(ctx, "STUDY", **keys)}


def test_every_study_with_counts_over_the_whole_study(filed: Context) -> None:
    found = find(filed, "STUDY")
    assert len(found) == 7
    series = [m.values for m in found if m.values.get("AccessionNumber") == "XF2024"]
    assert len(series) == 1
    assert series[0]["NumberOfStudyRelatedInstances"] == 3
    assert series[0]["NumberOfStudyRelatedSeries"] == 1
    assert series[0]["ModalitiesInStudy"] == ["CT"]
    # most recent first
    dates = [m.values.get("StudyDate", "") for m in found]
    assert dates == sorted(dates, reverse=True)


def test_counts_stay_whole_when_a_lower_level_key_narrows_the_match(filed: Context) -> None:
    found = find(filed, "STUDY", AccessionNumber="XF2024", InstanceNumber="2")
    assert [m.values["NumberOfStudyRelatedInstances"] for m in found] == [3]


def test_names_match_in_any_component_group_and_come_back_exact(filed: Context) -> None:
    wang = studies(filed, PatientName="Wang*")
    assert len(wang) == 3  # chrX1 (UTF-8), chrX2 (GB18030), IR 58
    simplified = find(filed, "STUDY", PatientName="王^小东")
    assert {m.values["PatientName"] for m in simplified} == {"Wang^XiaoDong=王^小东"}
    assert IR58_STUDY + ".1" in {m.values["StudyInstanceUID"] for m in simplified}
    assert len(simplified) == 2  # chrX1 is 小東, the traditional form
    assert studies(filed, PatientName="wang^xiaodong") == wang  # case does not matter
    assert studies(filed, PatientName="王*") == wang
    assert studies(filed, PatientName="Li*") == set()


def test_fuzzy_names_ignore_spaces_delimiters_and_width(filed: Context) -> None:
    assert len(studies(filed, PatientName="小东", fuzzy=True)) == 2  # type: ignore[arg-type]
    assert len(studies(filed, PatientName="ｘｉａｏ dong", fuzzy=True)) == 3  # type: ignore[arg-type]
    assert studies(filed, PatientName="xiao dong") == set()  # not fuzzy: no such name


def test_dates_match_by_range_and_single_value(filed: Context) -> None:
    ct_mr = studies(filed, StudyDate="20040101-20041231")
    assert len(ct_mr) == 2
    assert len(studies(filed, StudyDate="-20040120")) == 1  # the CT of 2004-01-19
    assert len(studies(filed, StudyDate="20240301")) == 1
    assert len(studies(filed, StudyDate="2024-")) == 2  # the series and the IR 58 object


def test_modalities_in_study_and_uid_lists(filed: Context) -> None:
    assert len(studies(filed, ModalitiesInStudy="CT\\MR")) == 3
    assert len(studies(filed, ModalitiesInStudy="ECG")) == 1
    two = sorted(studies(filed))[:2]
    assert studies(filed, StudyInstanceUID="\\".join(two)) == set(two)


def test_series_and_instances_of_a_study(filed: Context) -> None:
    study = find(filed, "STUDY", AccessionNumber="XF2024")[0].values["StudyInstanceUID"]
    series = find(filed, "SERIES", StudyInstanceUID=study)
    assert len(series) == 1
    assert series[0].values["NumberOfSeriesRelatedInstances"] == 3
    assert series[0].values["Modality"] == "CT"
    images = find(filed, "IMAGE", StudyInstanceUID=study, wanted=["Rows", "00280011"])
    assert [m.values["InstanceNumber"] for m in images] == [1, 2, 3]
    assert images[0].elements["00280010"] == {"vr": "US", "Value": [128]}
    assert images[0].elements["00280011"]["Value"] == [128]


def test_a_header_is_made_from_the_object_when_first_asked_for_and_kept(filed: Context) -> None:
    with filed.engine.connect() as conn:
        rows = query.instances(conn, patient_id="642341")
        assert conn.execute(select(c.header).where(c.sop_uid == rows[0].sop_uid)).scalar() is None
    headers = Headers(filed.engine, filed.dicom.store)
    [made] = headers([rows[0].sop_uid]).values()
    assert made["00100020"] == {"vr": "LO", "Value": ["642341"]}
    assert "54001010" not in made  # the waveform data is bulk: not in the header
    with filed.engine.connect() as conn:
        kept = conn.execute(select(c.header).where(c.sop_uid == rows[0].sop_uid)).scalar()
    assert json.loads(kept) == made


def test_patients_are_grouped_by_id_and_issuer(filed: Context) -> None:
    found = find(filed, "PATIENT", PatientID="1CT1")
    assert len(found) == 1
    # CT_small and the 3-instance series made from it: one patient, two studies
    assert found[0].values["NumberOfPatientRelatedStudies"] == 2
    assert found[0].values["NumberOfPatientRelatedInstances"] == 4
    assert len(find(filed, "PATIENT")) == 6


def test_limit_and_offset_page_without_overlap(filed: Context) -> None:
    pages = [
        [m.values["StudyInstanceUID"] for m in find(filed, "STUDY", limit=3, offset=o)]
        for o in (0, 3, 6)
    ]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert len({uid for page in pages for uid in page}) == 7


def test_only_visible_instances_exist(filed: Context) -> None:
    nobody = query.visible_clause(Scope(patients=PatientSet(), include_unowned=False))
    assert find(filed, "STUDY", nobody) == []
    patient = next(iter(_patient_refs(filed)))
    one = query.visible_clause(Scope(patients=PatientSet(ids=frozenset({patient}))))
    assert 1 <= len(find(filed, "STUDY", one)) < 7
    assert query.visible_clause(Scope()) is None


def _patient_refs(ctx: Context) -> set[str]:
    with ctx.engine.connect() as conn:
        return {r.patient_ref for r in query.instances(conn)}


def test_instances_for_a_retrieve(filed: Context) -> None:
    study = find(filed, "STUDY", AccessionNumber="XF2024")[0].values["StudyInstanceUID"]
    with filed.engine.connect() as conn:
        rows = query.instances(conn, study=study)
        assert [r.instance_number for r in rows] == [1, 2, 3]
        assert query.instances(conn, sop=rows[1].sop_uid)[0].sop_uid == rows[1].sop_uid
        assert query.instances(conn, patient_id="1CT1", study=generate_uid()) == []


@pytest.mark.parametrize(
    ("level", "keys", "message"),
    [
        ("FRAME", {}, "unknown query level"),
        ("STUDY", {"PatientAge": "040Y"}, "cannot be matched"),
        ("STUDY", {"StudyDate": "2004x-"}, "not a DICOM date"),
        ("STUDY", {"NumberOfStudyRelatedInstances": "3"}, "returned, not matched"),
        ("IMAGE", {"InstanceNumber": "one"}, "not a number"),
    ],
)
def test_a_query_that_cannot_be_answered_says_why(
    filed: Context, level: str, keys: dict[str, str], message: str
) -> None:
    with pytest.raises(QueryError, match=message):
        find(filed, level, **keys)


def test_a_device_registered_through_the_fhir_api_may_call(client, as_user, demo) -> None:  # type: ignore[no-untyped-def]
    device = {
        "resourceType": "Device",
        "identifier": [{"system": "urn:yilian:dicom-ae", "value": "XINGFU_US"}],
        "owner": {"reference": "Organization/XINGFU-THC"},
        "url": "dicom://10.0.0.7:104",
    }
    created = client.post("/fhir/Device", json=device, headers=as_user("admin"))
    assert created.status_code == 201, created.text
    assert "XINGFU_US" in demo.dicom.known_ae_titles()
    assert demo.dicom.organization_of_ae("XINGFU_US") == "XINGFU-THC"
    refused = client.post("/fhir/Device", json=device, headers=as_user("doctor.xingfu"))
    assert refused.status_code == 403


def test_fuzzy_matching_of_another_name_does_not_match_the_patients(filed: Context) -> None:
    # the patients are Wang XiaoDong; nobody was referred by a Dr Wang
    found = studies(filed, ReferringPhysicianName="wang", fuzzy=True)  # type: ignore[arg-type]
    assert found == set()


def test_a_retired_device_acts_for_nobody(demo: Context) -> None:
    from records import store

    with demo.engine.begin() as conn:
        device = store.current(conn, "Device", "xingfu-ct")
        assert device is not None
        body = device.json() | {"status": "inactive"}
        store.write(conn, "Device", "xingfu-ct", body, "PUT")
    demo.dicom.forget_devices()
    assert demo.dicom.organization_of_ae("XINGFU_CT") is None
    assert demo.dicom.organization_of_ae("XINGFU_ECG") == "XINGFU-THC"
