"""Query/retrieve on the gateway's SCP against real peers: dcmtk's findscu, getscu and movescu,
and Orthanc as a C-MOVE destination and as a third-party C-FIND/C-MOVE requester."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import select

from dicom.ingest import AE_SYSTEM, Origin
from dicom.qr import QueryRetrieve
from dicom.scp import DicomServer
from gateway.context import Context
from records import schema, store
from tests.dicom.conftest import ir58_file, query_retrieve_scp
from tests.dicom.orthanc import running_orthanc
from tests.dicom.peers import dcmtk
from tests.dicom.test_scp import (
    CHARSETS,
    copy_with_new_uids,
    dataset_bytes,
    instances,
    sample,
    storescu,
)

pytestmark = pytest.mark.slow

XINGFU = "XINGFU-THC"


@pytest.fixture
def scp(demo: Context) -> Iterator[DicomServer]:
    with query_retrieve_scp(demo) as server:
        yield server


def register(ctx: Context, ae_title: str, owner: str, port: int | None = None) -> None:
    """A Device calling with ``ae_title`` for ``owner``, reachable at ``port`` if given (written
    as ``gateway.demo`` registers its devices)."""
    body = {
        "resourceType": "Device",
        "identifier": [{"system": AE_SYSTEM, "value": ae_title}],
        "status": "active",
        "owner": {"reference": f"Organization/{owner}"},
    }
    if port is not None:
        body["url"] = f"dicom://127.0.0.1:{port}"
    with ctx.engine.begin() as conn:
        store.write(conn, "Device", ae_title.lower().replace("_", "-"), body, "PUT")


def findscu(
    port: int, folder: Path, *keys: str, aet: str = "XINGFU_CT", root: str = "-S"
) -> tuple[list[Dataset], str]:
    """findscu's answers, each extracted to a file (``-X``) and read back, and its output."""
    out = folder / f"find-{len(list(folder.glob('find-*')))}"
    out.mkdir()
    args = [a for k in keys for a in ("-k", k)]
    done = dcmtk(
        "findscu", "-v", root, "-aet", aet, "-aec", "YILIAN", "-X", "-od", str(out),
        *args, "127.0.0.1", str(port),
    )  # fmt: skip
    answers = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return answers, done.stdout + done.stderr


def getscu(port: int, folder: Path, *keys: str, aet: str = "XINGFU_CT") -> tuple[list[Path], str]:
    """The files getscu wrote, received bit for bit (``+B``), and its output."""
    out = folder / f"get-{len(list(folder.glob('get-*')))}"
    out.mkdir()
    args = [a for k in keys for a in ("-k", k)]
    done = dcmtk(
        "getscu", "-v", "-S", "+B", "-aet", aet, "-aec", "YILIAN", "-od", str(out),
        *args, "127.0.0.1", str(port),
    )  # fmt: skip
    return sorted(out.iterdir()), done.stdout + done.stderr


def movescu(port: int, destination: str, *keys: str, aet: str = "XINGFU_CT") -> str:
    args = [a for k in keys for a in ("-k", k)]
    done = dcmtk(
        "movescu", "-v", "-S", "-aet", aet, "-aec", "YILIAN", "-aem", destination,
        *args, "127.0.0.1", str(port),
    )  # fmt: skip
    return done.stdout + done.stderr


def audit(ctx: Context, action: str) -> list[dict]:  # type: ignore[type-arg]
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(schema.audit_record)
            .where(schema.audit_record.c.action == action)
            .order_by(schema.audit_record.c.seq)
        )
        return [{**r._mapping, "resources": json.loads(r.resources)} for r in rows]


def ct_series(folder: Path, count: int = 3) -> list[Path]:
    series = folder / "series"
    series.mkdir()
    return copy_with_new_uids(sample("CT_small.dcm"), series, count, StudyDate="20240301")


# -- C-FIND ------------------------------------------------------------------------------------


def test_studies_found_by_a_patient_name_wildcard_with_their_values(
    scp: DicomServer, tmp_path: Path
) -> None:
    ct, mr = sample("CT_small.dcm"), sample("MR_small.dcm")
    assert "Success" in storescu(scp.port, ct, mr)
    answers, output = findscu(
        scp.port, tmp_path,
        "QueryRetrieveLevel=STUDY", "PatientName=compressedsamples*", "PatientID",
        "StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
        "InstitutionName",
    )  # fmt: skip
    assert len(answers) == 2, output
    by_study = {a.StudyInstanceUID: a for a in answers}
    for source, modality in ((ct, "CT"), (mr, "MR")):
        original = pydicom.dcmread(source)
        answer = by_study[original.StudyInstanceUID]
        assert answer.SpecificCharacterSet == "ISO_IR 192"
        assert answer.QueryRetrieveLevel == "STUDY"
        assert answer.RetrieveAETitle == "YILIAN"
        assert str(answer.PatientName) == str(original.PatientName)
        assert answer.PatientID == original.PatientID
        assert answer.StudyDate == original.StudyDate
        assert answer.ModalitiesInStudy == modality
        assert answer.NumberOfStudyRelatedInstances == 1
        # not in the index: from the stored header, empty when the object has none
        assert answer.InstitutionName == original.get("InstitutionName", "")


def test_a_key_the_index_does_not_hold_still_matches(scp: DicomServer, tmp_path: Path) -> None:
    ct, mr = sample("CT_small.dcm"), sample("MR_small.dcm")
    storescu(scp.port, ct, mr)
    answers, output = findscu(
        scp.port, tmp_path, "QueryRetrieveLevel=STUDY", "InstitutionName=JFK*", "StudyInstanceUID"
    )
    assert [a.StudyInstanceUID for a in answers] == [pydicom.dcmread(ct).StudyInstanceUID], output


def test_a_gb18030_name_is_found_by_its_ideographic_group_and_answered_exactly(
    scp: DicomServer, tmp_path: Path
) -> None:
    assert "Success" in storescu(scp.port, CHARSETS / "chrX2.dcm")
    answers, output = findscu(
        scp.port, tmp_path,
        "QueryRetrieveLevel=PATIENT", "SpecificCharacterSet=ISO_IR 192", "PatientName=王^小东",
        "PatientID", "NumberOfPatientRelatedStudies",
        root="-P",
    )  # fmt: skip
    assert len(answers) == 1, output
    [answer] = answers
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "Wang^XiaoDong=王^小东"
    assert answer.PatientID == "X2EXAMPLE"
    assert answer.NumberOfPatientRelatedStudies == 1


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("chrX1.dcm", "Wang^XiaoDong=王^小東"),  # ISO_IR 192
        ("ir58", "Wang^XiaoDong=王^小东"),  # ISO 2022 IR 58, which pydicom decodes wrongly
    ],
)
def test_utf8_and_ir58_names_are_answered_exactly(
    scp: DicomServer, tmp_path: Path, source: str, expected: str
) -> None:
    path = ir58_file(tmp_path) if source == "ir58" else CHARSETS / source
    assert "Success" in storescu(scp.port, path)
    answers, output = findscu(
        scp.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=Wang*", "StudyInstanceUID",
    )  # fmt: skip
    assert [str(a.PatientName) for a in answers] == [expected], output
    assert "\x1b" not in repr(answers[0].PatientName)


def test_series_and_images_of_a_study_found_by_modality_and_uid(
    scp: DicomServer, tmp_path: Path
) -> None:
    files = ct_series(tmp_path)
    storescu(scp.port, *files, sample("MR_small.dcm"))
    first = pydicom.dcmread(files[0])
    studies, output = findscu(
        scp.port, tmp_path, "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=CT", "StudyInstanceUID"
    )
    assert [s.StudyInstanceUID for s in studies] == [first.StudyInstanceUID], output
    series, output = findscu(
        scp.port, tmp_path,
        "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={first.StudyInstanceUID}",
        "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances",
    )  # fmt: skip
    assert len(series) == 1, output
    assert series[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert series[0].Modality == "CT" and series[0].NumberOfSeriesRelatedInstances == 3
    images, output = findscu(
        scp.port, tmp_path,
        "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={first.StudyInstanceUID}",
        f"SeriesInstanceUID={first.SeriesInstanceUID}", "SOPInstanceUID", "InstanceNumber",
        "SOPClassUID",
    )  # fmt: skip
    expected = {pydicom.dcmread(f).SOPInstanceUID: n + 1 for n, f in enumerate(files)}
    assert {i.SOPInstanceUID: i.InstanceNumber for i in images} == expected, output
    assert {i.QueryRetrieveLevel for i in images} == {"IMAGE"}


def test_a_level_outside_the_information_model_is_refused(scp: DicomServer, tmp_path: Path) -> None:
    storescu(scp.port, sample("CT_small.dcm"))
    answers, output = findscu(scp.port, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientID")
    assert answers == []
    assert re.search(r"0xa900|DataSetDoesNotMatchSOPClass", output, re.IGNORECASE), output


def test_a_caller_of_another_organization_sees_nothing(
    scp: DicomServer, demo: Context, tmp_path: Path
) -> None:
    register(demo, "HEPING_WS", "HEPING-THC")
    storescu(scp.port, sample("CT_small.dcm"))
    keys = ("QueryRetrieveLevel=STUDY", "PatientName=*", "StudyInstanceUID")
    mine, output = findscu(scp.port, tmp_path, *keys)
    assert len(mine) == 1, output
    theirs, output = findscu(scp.port, tmp_path, *keys, aet="HEPING_WS")
    assert theirs == [] and "Success" in output, output
    uid = mine[0].StudyInstanceUID
    files, output = getscu(
        scp.port, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}", aet="HEPING_WS"
    )
    assert files == [], output


def test_an_unregistered_caller_is_rejected_at_association(
    scp: DicomServer, tmp_path: Path
) -> None:
    answers, output = findscu(
        scp.port, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", aet="STRANGER"
    )
    assert answers == []
    assert "Calling AE Title Not Recognized" in output, output


# -- C-GET -------------------------------------------------------------------------------------


def test_getscu_retrieves_a_series_and_an_ecg_as_stored(
    scp: DicomServer, demo: Context, tmp_path: Path
) -> None:
    files = ct_series(tmp_path)
    ecg = sample("waveform_ecg.dcm")
    storescu(scp.port, *files, ecg)
    stored = {r.sop_uid: demo.dicom.store.path(r.storage_key) for r in instances(demo)}
    first = pydicom.dcmread(files[0])
    got, output = getscu(
        scp.port, tmp_path,
        "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={first.StudyInstanceUID}",
        f"SeriesInstanceUID={first.SeriesInstanceUID}",
    )  # fmt: skip
    assert len(got) == 3, output
    for path in got:
        ds = pydicom.dcmread(path)
        assert dataset_bytes(path) == dataset_bytes(stored[ds.SOPInstanceUID]), output
    original = pydicom.dcmread(ecg)
    got, output = getscu(
        scp.port, tmp_path,
        "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={original.StudyInstanceUID}",
        f"SeriesInstanceUID={original.SeriesInstanceUID}",
        f"SOPInstanceUID={original.SOPInstanceUID}",
    )  # fmt: skip
    assert len(got) == 1, output
    assert dataset_bytes(got[0]) == dataset_bytes(stored[original.SOPInstanceUID])
    received = pydicom.dcmread(got[0])
    assert received.WaveformSequence[0].WaveformData == original.WaveformSequence[0].WaveformData


def test_an_object_in_a_transfer_syntax_the_requestor_refused_is_counted_failed(
    scp: DicomServer, demo: Context, tmp_path: Path
) -> None:
    [ct] = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 1)
    folder = tmp_path / "rle"
    folder.mkdir()
    [rle] = copy_with_new_uids(sample("MR_small_RLE.dcm"), folder, 1)
    ct_uid, rle_uid = pydicom.dcmread(ct).SOPInstanceUID, pydicom.dcmread(rle).SOPInstanceUID
    storescu(scp.port, ct)
    # storescu would decompress it on the way: filed as it is (the file moves into the store)
    origin = Origin("dicom", "XINGFU_CT", "127.0.0.1:1", XINGFU)
    assert demo.dicom.file(rle, origin).ok
    syntaxes = {r.sop_uid: r.transfer_syntax for r in instances(demo)}
    assert syntaxes[rle_uid] == RLELossless
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="XINGFU_CT")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for context in StoragePresentationContexts[:100]:  # uncompressed only
        ae.add_requested_context(context.abstract_syntax, ExplicitVRLittleEndian)
        roles.append(build_role(context.abstract_syntax, scp_role=True))
    assoc = ae.associate(
        "127.0.0.1", scp.port, ae_title="YILIAN", ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    assert assoc.is_established
    request = Dataset()
    request.QueryRetrieveLevel = "IMAGE"
    request.SOPInstanceUID = [ct_uid, rle_uid]
    try:
        responses = list(assoc.send_c_get(request, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    status, identifier = responses[-1]
    assert status.Status == 0xB000
    assert status.NumberOfCompletedSuboperations == 1 and status.NumberOfFailedSuboperations == 1
    assert identifier.FailedSOPInstanceUIDList == rle_uid
    assert received == [ct_uid]


# -- C-MOVE ------------------------------------------------------------------------------------


def test_movescu_sends_a_study_to_orthanc(scp: DicomServer, demo: Context, tmp_path: Path) -> None:
    with running_orthanc(tmp_path, aet="ORTHANC_DEST") as pacs:
        register(demo, "ORTHANC_DEST", XINGFU, pacs.dicom_port)
        files = ct_series(tmp_path)
        storescu(scp.port, *files, sample("MR_small.dcm"))
        study = pydicom.dcmread(files[0]).StudyInstanceUID
        output = movescu(
            scp.port, "ORTHANC_DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"
        )
        assert pacs.studies() == [study], output
        assert pacs.instances() == sorted(pydicom.dcmread(f).SOPInstanceUID for f in files)
    [record] = audit(demo, "dicom-move")
    assert record["resources"] == [f"urn:oid:{study}"]
    assert record["actor"] == "dicom:XINGFU_CT" and record["role"] == "device"
    assert (
        record["patient"] == {r.patient_ref for r in instances(demo) if r.study_uid == study}.pop()
    )
    assert "ORTHANC_DEST" in record["detail"]


def test_orthanc_queries_the_gateway_and_moves_a_study_to_itself(
    scp: DicomServer, demo: Context, tmp_path: Path
) -> None:
    modalities = {"yilian": ("YILIAN", "127.0.0.1", scp.port)}
    with running_orthanc(tmp_path, aet="ORTHANC_QR", modalities=modalities) as pacs:
        register(demo, "ORTHANC_QR", XINGFU, pacs.dicom_port)
        ct = sample("CT_small.dcm")
        storescu(scp.port, ct, sample("MR_small.dcm"))
        original = pydicom.dcmread(ct)
        found = pacs.post(
            "/modalities/yilian/query",
            {"Level": "Study", "Query": {"PatientName": "CompressedSamples^CT1"}},
        )
        answers = pacs.get(f"/queries/{found['ID']}/answers?expand&simplify")
        assert [a["StudyInstanceUID"] for a in answers] == [original.StudyInstanceUID]
        assert answers[0]["PatientName"] == str(original.PatientName)
        pacs.post(
            f"/queries/{found['ID']}/answers/0/retrieve",
            {"TargetAet": "ORTHANC_QR", "Synchronous": True},
        )
        assert pacs.instances() == [original.SOPInstanceUID]


def test_an_unknown_move_destination_fails_with_a801(scp: DicomServer) -> None:
    storescu(scp.port, sample("CT_small.dcm"))
    study = pydicom.dcmread(sample("CT_small.dcm")).StudyInstanceUID
    output = movescu(scp.port, "NOWHERE", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    assert re.search(r"0xa801|MoveDestinationUnknown", output, re.IGNORECASE), output


def test_a_destination_of_another_organization_is_unknown_to_the_caller(
    demo: Context,
) -> None:
    register(demo, "CITY_PACS", "CITY-FIRST", 104)
    qr = QueryRetrieve(demo.dicom)
    assert qr.destination("CITY_PACS", "CITY-FIRST") == ("127.0.0.1", 104)
    assert qr.destination("CITY_PACS", XINGFU) is None
    assert qr.destination("CITY_PACS", None) is None


def test_a_retrieve_the_model_cannot_answer_fails_with_a900_and_says_why(
    scp: DicomServer, demo: Context
) -> None:
    destination = AE(ae_title="XINGFU_WS")
    destination.add_supported_context(Verification)
    server = destination.start_server(("127.0.0.1", 0), block=False)
    register(demo, "XINGFU_WS", XINGFU, server.server_address[1])
    ae = AE(ae_title="XINGFU_CT")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="YILIAN")
    assert assoc.is_established
    no_uid, patient = Dataset(), Dataset()
    no_uid.QueryRetrieveLevel = "STUDY"
    no_uid.PatientID = "1CT1"
    patient.QueryRetrieveLevel = "PATIENT"  # not a level of the Study Root model
    patient.PatientID = "1CT1"
    try:
        moved = list(
            assoc.send_c_move(no_uid, "XINGFU_WS", StudyRootQueryRetrieveInformationModelMove)
        )
        got = list(assoc.send_c_get(patient, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
        server.shutdown()
    [(status, _)] = moved
    assert status.Status == 0xA900
    assert status.ErrorComment == "a STUDY retrieve needs StudyInstanceUID"
    [(status, _)] = got
    assert status.Status == 0xA900
    assert status.ErrorComment.startswith("QueryRetrieveLevel PATIENT: one of STUDY")


# -- audit -------------------------------------------------------------------------------------


def test_each_find_and_get_is_audited_with_the_studies_and_their_patients(
    scp: DicomServer, demo: Context, tmp_path: Path
) -> None:
    ct, mr = sample("CT_small.dcm"), sample("MR_small.dcm")
    storescu(scp.port, ct, mr)
    patients = {r.study_uid: r.patient_ref for r in instances(demo)}
    answers, _ = findscu(
        scp.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=*", "StudyInstanceUID"
    )
    assert len(answers) == 2
    found = audit(demo, "dicom-find")
    assert {(r["resources"][0], r["patient"]) for r in found} == {
        (f"urn:oid:{s}", p) for s, p in patients.items()
    }
    assert {r["actor"] for r in found} == {"dicom:XINGFU_CT"}
    assert all(r["organization"] == XINGFU and r["role"] == "device" for r in found)
    study = pydicom.dcmread(ct).StudyInstanceUID
    getscu(scp.port, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    [got] = audit(demo, "dicom-get")
    assert got["resources"] == [f"urn:oid:{study}"] and got["patient"] == patients[study]
    assert got["detail"] == "STUDY level, 1 instances"
    # nothing of the patients in the detail: levels and counts only
    assert not any("CompressedSamples" in (r["detail"] or "") for r in found + [got])
