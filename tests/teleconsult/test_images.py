"""The images and ECGs of a request travel by DICOM C-STORE over TLS: to the reading hospital's
own gateway (its SCP, which files them so the specialist sees them with the request), and to a
hospital that runs only a PACS (Orthanc with DICOM TLS and a required client certificate)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from dicom.ingest import AE_SYSTEM, Origin
from records import store
from records.schema import dicom_instance
from teleconsult import directory
from tests.dicom.orthanc import DicomTls, running_orthanc
from tests.dicom.test_scp import copy_with_new_uids, sample
from tests.teleconsult.conftest import HOSPITAL, TOWNSHIP, Member, running_member
from tests.teleconsult.test_exchange import PATIENT, _fix_clock

pytestmark = pytest.mark.slow


def _file_township_study(township: Member, folder: Path) -> tuple[str, str, list[str]]:
    """An ECG and a 3-image CT series of the demo resident, filed at the township as its
    devices would send them: (ImagingStudy id of the CT, ECG Observation id, CT SOP UIDs)."""
    ctx = township.ctx
    origin = Origin("dicom", "XINGFU_CT", "127.0.0.1:1", ctx.dicom.organization_of_ae("XINGFU_CT"))
    with ctx.engine.connect() as conn:
        number = store.read(conn, "Patient", PATIENT).json()["identifier"][0]["value"]
    folder.mkdir()
    cts = copy_with_new_uids(sample("CT_small.dcm"), folder, 3, PatientID=number)
    ecg = Path(shutil.copy(sample("waveform_ecg.dcm"), folder / "ecg.dcm"))
    ds = pydicom.dcmread(ecg)
    ds.PatientID = number
    ds.save_as(ecg)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in cts]
    for path in [*cts, ecg]:
        outcome = ctx.dicom.file(path, origin)
        assert outcome.ok, outcome.reason
    with ctx.engine.connect() as conn:
        studies = ctx.records.search_in(
            conn, _system(), "ImagingStudy", [("subject", f"Patient/{PATIENT}")]
        )
        ct = next(s for s in studies.matches if "CT" in s.content)
        ecgs = ctx.records.search_in(
            conn,
            _system(),
            "Observation",
            [("subject", f"Patient/{PATIENT}"), ("code", "http://loinc.org|11524-6")],
        )
    return ct.res_id, ecgs.matches[0].res_id, uids


def _system():  # type: ignore[no-untyped-def]
    from security.principal import SYSTEM

    return SYSTEM


@pytest.fixture
def imaging_pair(tmp_path: Path, consortium_ca: Any) -> Iterator[tuple[Member, Member]]:
    ca = consortium_ca
    with (
        running_member(TOWNSHIP, tmp_path, ca, [HOSPITAL]) as township,
        running_member(
            HOSPITAL,
            tmp_path,
            ca,
            [TOWNSHIP],
            dicom_enabled=True,
            dicom_port=0,
            dicom_tls_cert=ca.server_cert,
            dicom_tls_key=ca.server_key,
            dicom_tls_client_ca=ca.ca_cert,
        ) as hospital,
    ):
        township.point_at(hospital)
        hospital.point_at(township)
        township.point_at(
            hospital,
            kind=directory.DICOM,
            address=f"dicoms://{hospital.settings.dicom_ae}@localhost:{hospital.dicom_port}",
        )
        # the hospital knows the township gateway's calling AE title as one of its devices
        device = {
            "resourceType": "Device",
            "identifier": [{"system": AE_SYSTEM, "value": township.settings.dicom_ae}],
            "status": "active",
            "owner": {"reference": "Organization/XINGFU-THC"},
        }
        with hospital.ctx.engine.begin() as conn:
            store.write(conn, "Device", "xingfu-gateway", device, "PUT")
        yield township, hospital


def test_the_studies_of_a_request_reach_the_hospital_and_show_with_it(
    imaging_pair, consortium_ca, tmp_path: Path
):
    township, hospital = imaging_pair
    study, ecg, uids = _file_township_study(township, tmp_path / "in")
    _fix_clock(township)
    with township.api(consortium_ca) as api:
        doctor = township.token("doctor.xingfu")
        imaging = api.post(
            "/api/teleconsult/requests",
            json={"kind": "imaging", "patient": PATIENT, "studies": [study], "priority": "urgent"},
            headers=doctor,
        )
        assert imaging.status_code == 201, imaging.text
        ecg_request = api.post(
            "/api/teleconsult/requests",
            json={"kind": "ecg", "patient": PATIENT, "observations": [ecg], "priority": "stat"},
            headers=doctor,
        )
        assert ecg_request.status_code == 201, ecg_request.text
    topics = [(e.topic, e.destination) for e in reversed(township.outbox())]
    assert topics == [
        ("request", "CITY-FIRST-fhir"),
        ("images", "CITY-FIRST-dicom"),
        ("request", "CITY-FIRST-fhir"),
        ("images", "CITY-FIRST-dicom"),
    ]
    township.deliver()
    assert {e.status for e in township.outbox()} == {"delivered"}, [
        (e.topic, e.last_error) for e in township.outbox()
    ]
    # at the hospital: the instances are filed, under the same resident, and the specialist
    # sees the studies of the requests routed there
    with hospital.ctx.engine.connect() as conn:
        held = {r.sop_uid for r in conn.execute(select(dicom_instance.c.sop_uid))}
    assert set(uids) <= held
    with hospital.api(consortium_ca) as api:
        specialist = hospital.token("specialist.city")
        worklist = api.get("/api/teleconsult/worklist", headers=specialist).json()
        assert [w["kind"] for w in worklist] == ["ecg", "imaging"]  # stat first
        patient = worklist[0]["patient"]
        found = api.get(
            "/fhir/ImagingStudy", params={"subject": patient}, headers=specialist
        ).json()
        assert found.get("total") == 2, found  # the CT and the ECG's study
        instances = api.get("/dicomweb/studies", headers=specialist)
        assert instances.status_code == 200
        observations = api.get(
            "/fhir/Observation",
            params={"subject": patient, "code": "http://loinc.org|11524-6"},
            headers=specialist,
        ).json()
        assert observations.get("total") == 1  # the 12-lead ECG, filed at the hospital


def test_a_pacs_only_hospital_gets_the_images_over_dicom_tls(tmp_path: Path, consortium_ca: Any):
    ca = consortium_ca
    tls = DicomTls(ca.server_cert, ca.server_key, ca.ca_cert, client_certificate_required=True)
    with (
        running_member(TOWNSHIP, tmp_path, ca, []) as township,
        running_orthanc(tmp_path, aet="CITY_PACS", dicom_tls=tls) as pacs,
    ):
        # City First runs only a PACS: a DICOM endpoint, no FHIR one
        township.point_at(
            HOSPITAL,
            kind=directory.DICOM,
            address=f"dicoms://CITY_PACS@localhost:{pacs.dicom_port}",
        )
        with township.ctx.engine.begin() as conn:
            store.remove(conn, "Endpoint", "CITY-FIRST-fhir")
        study, _, uids = _file_township_study(township, tmp_path / "in")
        _fix_clock(township)
        with township.api(ca) as api:
            made = api.post(
                "/api/teleconsult/requests",
                json={"kind": "imaging", "patient": PATIENT, "studies": [study]},
                headers=township.token("doctor.xingfu"),
            )
        assert made.status_code == 201, made.text
        assert [e.topic for e in township.outbox()] == ["images"]
        township.deliver()
        [row] = township.outbox()
        assert row.status == "delivered", row.last_error
        assert set(uids) <= set(pacs.instances())  # SOP Instance UIDs Orthanc holds
