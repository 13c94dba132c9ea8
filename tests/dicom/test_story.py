"""Issue 4's "done means", played as a new user would: the gateway running as ``yilian serve``
runs it, a township ECG cart and CT store with dcmtk's storescu, then the record is read through
the FHIR API and DICOMweb, and dcmtk's findscu and getscu query and retrieve the objects back."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from dicom import query
from gateway.context import Context
from tests.dicom.conftest import LiveGateway
from tests.dicom.test_qr import findscu, getscu
from tests.dicom.test_scp import copy_with_new_uids, dataset_bytes, sample, storescu

pytestmark = pytest.mark.slow

LOINC = "http://loinc.org"


def test_an_ecg_and_a_ct_series_from_storescu_to_the_record_and_back(
    live_gateway: LiveGateway, token: str, tmp_path: Path, demo: Context
) -> None:
    ecg = sample("waveform_ecg.dcm")
    ct = copy_with_new_uids(
        sample("CT_small.dcm"),
        tmp_path,
        4,
        SpecificCharacterSet="GB18030",
        StudyDescription="胸部平扫",
    )
    assert "Success" in storescu(live_gateway.dicom_port, ecg, aet="XINGFU_ECG")
    assert "Success" in storescu(live_gateway.dicom_port, *ct, aet="XINGFU_CT")
    ct_study = str(pydicom.dcmread(ct[0]).StudyInstanceUID)
    ecg_ds = pydicom.dcmread(ecg)

    fhir = httpx.Client(
        base_url=live_gateway.base, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    # the ImagingStudy of each, counts computed once the associations ended and were quiet
    deadline = time.monotonic() + 15
    while True:
        studies = fhir.get("/fhir/ImagingStudy", params={"_count": "10"}).json()
        by_uid = {
            s["resource"]["identifier"][0]["value"]: s["resource"] for s in studies.get("entry", [])
        }
        counted = by_uid.get(f"urn:oid:{ct_study}", {}).get("numberOfInstances")
        if counted == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert set(by_uid) == {f"urn:oid:{ct_study}", f"urn:oid:{ecg_ds.StudyInstanceUID}"}
    assert by_uid[f"urn:oid:{ct_study}"]["numberOfInstances"] == 4
    assert by_uid[f"urn:oid:{ct_study}"]["description"] == "胸部平扫"

    # the 12-lead waveform Observation, its measurements and the report with the tracing
    waveform = fhir.get("/fhir/Observation", params={"code": f"{LOINC}|11524-6"}).json()
    [entry] = waveform["entry"]
    assert len(entry["resource"]["component"]) == 12
    heart_rate = fhir.get("/fhir/Observation", params={"code": f"{LOINC}|8867-4"}).json()
    assert heart_rate["total"] == 1
    report = fhir.get("/fhir/DiagnosticReport", params={"code": f"{LOINC}|11524-6"}).json()
    [form] = report["entry"][0]["resource"]["presentedForm"]
    assert form["url"].startswith("/dicomweb/")
    tracing = fhir.get(form["url"])  # a link as it stands: the picture type is in it
    assert tracing.status_code == 200
    assert Image.open(io.BytesIO(tracing.content)).format == "PNG"

    # the same through DICOMweb
    web = DICOMwebClient(live_gateway.dicomweb, headers={"Authorization": f"Bearer {token}"})
    found = {s["0020000D"]["Value"][0] for s in web.search_for_studies()}
    assert found == {ct_study, ecg_ds.StudyInstanceUID}
    [ecg_instance] = web.search_for_instances(ecg_ds.StudyInstanceUID)
    assert ecg_instance["00080016"]["Value"] == [ecg_ds.SOPClassUID]

    # findscu and getscu from dcmtk query and retrieve them back, bit for bit
    answers, output = findscu(
        live_gateway.dicom_port, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
        "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
    )  # fmt: skip
    assert {str(a.StudyInstanceUID) for a in answers} == found, output
    files, output = getscu(
        live_gateway.dicom_port,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        f"StudyInstanceUID={ct_study}",
    )
    assert len(files) == 4, output
    # as received and stored (storescu itself leaves out the sample's trailing padding)
    assert {dataset_bytes(p) for p in files} == stored(demo, ct_study)
    files, output = getscu(
        live_gateway.dicom_port,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={ecg_ds.StudyInstanceUID}",
        f"SeriesInstanceUID={ecg_ds.SeriesInstanceUID}",
        f"SOPInstanceUID={ecg_ds.SOPInstanceUID}",
    )
    assert {dataset_bytes(p) for p in files} == stored(demo, ecg_ds.StudyInstanceUID), output


def stored(ctx: Context, study: str) -> set[bytes]:
    with ctx.engine.connect() as conn:
        rows = query.instances(conn, study=study)
    return {dataset_bytes(ctx.dicom.store.path(r.storage_key)) for r in rows}
