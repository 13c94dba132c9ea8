"""The DICOM SCP against dcmtk's echoscu and storescu: who may call, what is filed where, and
what a sender hears when an object is wrong."""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import func, select

from dicom import quarantine
from dicom.scp import DicomServer, ScpSettings
from gateway.context import Context
from records import schema, store
from tests.dicom.peers import dcmtk

pytestmark = pytest.mark.slow

CHARSETS = Path(os.path.dirname(pydicom.__file__)) / "data" / "charset_files"


def sample(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path, name
    return Path(str(path))


@pytest.fixture
def scp(demo: Context) -> Iterator[DicomServer]:
    server = DicomServer(
        demo.dicom,
        ScpSettings(port=0),
        known_ae_titles=demo.dicom.known_ae_titles,
    )
    server.start()
    yield server
    server.stop()


def storescu(port: int, *files: Path, aet: str = "XINGFU_CT") -> str:
    done = dcmtk(
        "storescu", "-v", "-aet", aet, "-aec", "YILIAN", "127.0.0.1", str(port), *map(str, files)
    )
    return done.stdout + done.stderr


def copy_with_new_uids(source: Path, folder: Path, count: int, **values: str) -> list[Path]:
    """``count`` copies of ``source`` in one new series of one new study."""
    study, series = generate_uid(), generate_uid()
    out = []
    for n in range(count):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        path = folder / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def instances(ctx: Context) -> list:  # type: ignore[type-arg]
    with ctx.engine.connect() as conn:
        return list(conn.execute(select(schema.dicom_instance)))


def find_one(ctx: Context, rtype: str) -> list[dict]:  # type: ignore[type-arg]
    """Every live resource of a type (the record store as written)."""
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(schema.resource.c.content).where(
                schema.resource.c.res_type == rtype, schema.resource.c.deleted.is_(False)
            )
        )
        return [json.loads(r[0]) for r in rows]


def resource(ctx: Context, rtype: str, rid: str) -> dict:  # type: ignore[type-arg]
    with ctx.engine.connect() as conn:
        found = store.current(conn, rtype, rid)
    assert found is not None, f"{rtype}/{rid}"
    return found.json()


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the File Meta Information, as it travelled."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    group_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL, explicit VR LE
    return data[144 + group_length :]


def test_echo_from_a_registered_device_succeeds(scp: DicomServer) -> None:
    done = dcmtk("echoscu", "-aet", "XINGFU_ECG", "-aec", "YILIAN", "127.0.0.1", str(scp.port))
    assert done.returncode == 0, done.stderr


def test_an_unknown_calling_ae_title_is_rejected_with_the_reason(scp: DicomServer) -> None:
    done = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "YILIAN", "127.0.0.1", str(scp.port))
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stdout + done.stderr


def test_a_ct_image_is_filed_byte_for_byte_with_patient_and_imaging_study(
    scp: DicomServer, demo: Context
) -> None:
    ct = sample("CT_small.dcm")
    output = storescu(scp.port, ct)
    assert "Received Store Response (Success)" in output, output
    [row] = instances(demo)
    original = pydicom.dcmread(ct)
    assert row.sop_uid == original.SOPInstanceUID
    stored = pydicom.dcmread(demo.dicom.store.path(row.storage_key))
    del original[0xFFFCFFFC]  # trailing padding storescu does not send
    assert stored == original  # storescu re-encodes what it sends: equal, not byte for byte
    assert row.org_id == "XINGFU-THC" and row.calling_ae == "XINGFU_CT"
    [study] = find_one(demo, "ImagingStudy")
    assert study["identifier"][0]["value"] == f"urn:oid:{original.StudyInstanceUID}"
    assert study["numberOfSeries"] == 1 and study["numberOfInstances"] == 1
    assert study["series"][0]["modality"]["code"] == "CT"
    assert study["subject"]["reference"] == f"Patient/{row.patient_ref}"
    patient = resource(demo, "Patient", row.patient_ref)
    assert patient["identifier"][0]["value"] == original.PatientID
    provenance = find_one(demo, "Provenance")
    assert any(
        t["reference"] == f"ImagingStudy/{study['id']}" for p in provenance for t in p["target"]
    )


def test_the_received_bytes_are_stored_without_decoding_and_encoding_again(
    scp: DicomServer, demo: Context, tmp_path: Path
) -> None:
    from pynetdicom import _config

    [ct] = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 1)
    ds = pydicom.dcmread(ct)
    ae = AE(ae_title="XINGFU_CT")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="YILIAN")
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes as they are on disk
    try:
        status = assoc.send_c_store(ct)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    assert status.Status == 0x0000
    [row] = instances(demo)
    assert dataset_bytes(demo.dicom.store.path(row.storage_key)) == dataset_bytes(ct)


def test_objects_are_received_into_the_stores_scratch_not_the_system_temp(
    scp: DicomServer, demo: Context, tmp_path: Path
) -> None:
    import tempfile

    from pynetdicom import dimse_messages

    with dimse_messages.NamedTemporaryFile() as receiving:
        assert Path(receiving.name).parent == demo.dicom.store.scratch()
    before = set(Path(tempfile.gettempdir()).glob("*.dcm"))
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 2)
    assert "Success" in storescu(scp.port, *files)
    assert set(Path(tempfile.gettempdir()).glob("*.dcm")) - before == set()
    left = list(demo.dicom.store.scratch().iterdir())  # filed: moved, not copied; what is
    assert all(p.stat().st_size == 0 for p in left)  # left are spares made ahead, empty


def test_a_series_over_one_association_ends_with_the_counts_of_the_index(
    scp: DicomServer, demo: Context, tmp_path: Path
) -> None:
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 5)
    output = storescu(scp.port, *files)
    assert output.count("Success") >= 5, output
    # the refresh runs in the SCP's association thread once the release is answered
    deadline = time.monotonic() + 10
    while find_one(demo, "ImagingStudy")[0]["numberOfInstances"] != 5:
        assert time.monotonic() < deadline, "the ImagingStudy was not refreshed"
        time.sleep(0.05)
    [study] = find_one(demo, "ImagingStudy")
    assert sorted(i["number"] for i in study["series"][0]["instance"]) == [1, 2, 3, 4, 5]


def test_a_repeated_instance_is_a_success_that_stores_nothing_twice(
    scp: DicomServer, demo: Context
) -> None:
    ct = sample("CT_small.dcm")
    storescu(scp.port, ct)
    before = _counts(demo)
    output = storescu(scp.port, ct)
    assert "Success" in output, output
    assert _counts(demo) == before


def test_the_same_uid_with_other_content_keeps_the_first_and_quarantines_the_second(
    scp: DicomServer, demo: Context, tmp_path: Path
) -> None:
    [first] = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 1)
    storescu(scp.port, first)
    ds = pydicom.dcmread(first)
    ds.SeriesDescription = "changed"
    other = tmp_path / "other.dcm"
    ds.save_as(other, enforce_file_format=True)
    output = storescu(scp.port, other)
    assert "Success" not in output.split("other.dcm")[-1], output
    [row] = instances(demo)
    assert pydicom.dcmread(demo.dicom.store.path(row.storage_key)).get("SeriesDescription") != (
        "changed"
    )
    [entry] = quarantine.entries(demo.engine)
    assert "other content" in entry.reason and entry.sop_uid == ds.SOPInstanceUID


def test_a_dataset_without_a_study_uid_is_refused_and_quarantined(
    scp: DicomServer, demo: Context
) -> None:
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    del ds.StudyInstanceUID
    ae = AE(ae_title="XINGFU_CT")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="YILIAN")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xA900
    assert "StudyInstanceUID" in status.ErrorComment
    [entry] = quarantine.entries(demo.engine)
    assert "StudyInstanceUID" in entry.reason
    assert demo.dicom.store.exists(entry.storage_key)
    assert instances(demo) == []


def test_a_corrupt_dataset_is_refused_and_the_scp_keeps_serving(
    scp: DicomServer, demo: Context, tmp_path: Path
) -> None:
    ct = sample("CT_small.dcm")
    ds = pydicom.dcmread(ct)
    broken = tmp_path / "broken.dcm"
    data = ct.read_bytes()
    cut = len(data) - len(dataset_bytes(ct))
    # a valid meta group, then an element whose length runs far past the end
    broken.write_bytes(data[:cut] + b"\x08\x00\x16\x00UI\xff\x7f" + b"1.2")
    from pynetdicom import _config

    ae = AE(ae_title="XINGFU_CT")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="YILIAN")
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(broken)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    assert status.Status in (0xC000, 0xA900)
    assert len(quarantine.entries(demo.engine)) == 1
    assert "Success" in storescu(scp.port, ct)  # the next sender is served as usual


def test_a_gb18030_name_reaches_the_patient_unchanged(scp: DicomServer, demo: Context) -> None:
    output = storescu(scp.port, CHARSETS / "chrX2.dcm")
    assert "Success" in output, output
    [row] = instances(demo)
    patient = resource(demo, "Patient", row.patient_ref)
    texts = [n.get("text") for n in patient["name"]]
    assert "王小东" in texts
    assert row.patient_name.startswith("Wang^XiaoDong=王^小东")


def _counts(ctx: Context) -> tuple[int, int, int]:
    with ctx.engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(schema.dicom_instance)).scalar_one(),
            conn.execute(select(func.count()).select_from(schema.resource)).scalar_one(),
            conn.execute(select(func.count()).select_from(schema.resource_version)).scalar_one(),
        )


def test_a_12_lead_ecg_becomes_waveform_measurements_and_report_in_the_record(
    scp: DicomServer,
    demo: Context,
    client,
    as_user,  # type: ignore[no-untyped-def]
) -> None:
    ecg = sample("waveform_ecg.dcm")
    output = storescu(scp.port, ecg, aet="XINGFU_ECG")
    assert "Received Store Response (Success)" in output, output
    [row] = instances(demo)
    headers = as_user("doctor.xingfu")
    found = client.get(
        "/fhir/Observation", params={"code": "http://loinc.org|11524-6"}, headers=headers
    ).json()
    [waveform] = [e["resource"] for e in found.get("entry", [])]
    assert len(waveform["component"]) == 12
    assert waveform["subject"]["reference"] == f"Patient/{row.patient_ref}"
    sampled = waveform["component"][0]["valueSampledData"]
    assert sampled["period"] == 1.0 and len(sampled["data"].split()) == 10000
    reports = client.get(
        "/fhir/DiagnosticReport", params={"subject": f"Patient/{row.patient_ref}"}, headers=headers
    ).json()
    [report] = [e["resource"] for e in reports["entry"]]
    results = {r["reference"] for r in report["result"]}
    assert f"Observation/{waveform['id']}" in results
    assert len(results) > 5  # the measurements (PR, QRS, QT, QTc, axes...) with the tracing
    [study] = find_one(demo, "ImagingStudy")
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]


def _send_part_of(assoc: Any, path: Path, fragments: int) -> None:
    """Send the C-STORE request of ``path`` but only its first ``fragments`` P-DATA PDUs."""
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    ds = pydicom.dcmread(path)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 0
    request.DataSet = BytesIO(dataset_bytes(path))
    [context] = [c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID]
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    for n, pdu in enumerate(message.encode_msg(context.context_id, 4096)):
        if n == fragments:
            break
        assoc.dul.send_pdu(pdu)


def test_an_object_cut_off_mid_transfer_is_quarantined_and_the_study_so_far_is_filed(
    scp: DicomServer, demo: Context, tmp_path: Path
) -> None:
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 3)
    ds = pydicom.dcmread(files[0])
    ae = AE(ae_title="XINGFU_CT")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="YILIAN", max_pdu=4096)
    assert assoc.is_established
    for path in files[:2]:
        assert assoc.send_c_store(path).Status == 0x0000
    _send_part_of(assoc, files[2], fragments=4)  # ~12 KB of ~39 KB
    time.sleep(0.3)
    assoc.abort()  # the modality loses power mid-object
    deadline = time.monotonic() + 10
    while not quarantine.entries(demo.engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    [entry] = quarantine.entries(demo.engine)
    assert entry.sop_uid == pydicom.dcmread(files[2]).SOPInstanceUID
    assert "cut off" in entry.reason
    kept = demo.dicom.store.path(entry.storage_key).stat().st_size
    assert 4096 < kept < files[2].stat().st_size
    # the two objects that arrived whole are filed and their study counted
    assert len(instances(demo)) == 2
    while time.monotonic() < deadline:
        [study] = find_one(demo, "ImagingStudy")
        if study.get("numberOfInstances") == 2:
            break
        time.sleep(0.05)
    assert study["numberOfInstances"] == 2
    assert "Success" in storescu(scp.port, files[2])  # the resend is filed; others are served
    assert len(instances(demo)) == 3


def test_an_sop_class_that_is_not_storage_is_refused_at_association(scp: DicomServer) -> None:
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    ae = AE(ae_title="XINGFU_CT")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="YILIAN")
    assert not assoc.is_established or not assoc.accepted_contexts
    rejected = assoc.rejected_contexts
    if assoc.is_established:
        assoc.release()
    assert [str(c.abstract_syntax) for c in rejected] == [str(ModalityWorklistInformationFind)]
