"""DICOMweb against clients and servers the project did not write: the ``dicomweb-client``
library, and Orthanc's DICOMweb plugin (answers compared; Orthanc pulling a study from us)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from tests.dicom.conftest import LiveGateway
from tests.dicom.orthanc import running_orthanc
from tests.dicom.test_scp import copy_with_new_uids, sample

pytestmark = pytest.mark.slow


@pytest.fixture
def live(live_gateway: LiveGateway) -> str:
    return live_gateway.dicomweb


def test_dicomweb_client_stores_searches_and_retrieves(
    live: str, token: str, tmp_path: Path
) -> None:
    client = DICOMwebClient(live, headers={"Authorization": f"Bearer {token}"})
    series = [pydicom.dcmread(p) for p in copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 3)]
    ecg = pydicom.dcmread(sample("waveform_ecg.dcm"))
    answer = client.store_instances([*series, ecg])
    assert len(answer.ReferencedSOPSequence) == 4
    assert "FailedSOPSequence" not in answer

    study_uid = series[0].StudyInstanceUID
    [study] = client.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
    assert study["00201208"]["Value"] == [3]
    found = client.search_for_instances(study_uid, fields=["Rows"])
    assert sorted(i["00080018"]["Value"][0] for i in found) == sorted(
        s.SOPInstanceUID for s in series
    )
    assert client.search_for_studies(search_filters={"PatientName": "CompressedSamples*"}, limit=1)

    second = series[1]
    instance = client.retrieve_instance(study_uid, second.SeriesInstanceUID, second.SOPInstanceUID)
    assert instance.SOPInstanceUID == second.SOPInstanceUID
    assert instance.PixelData == second.PixelData
    retrieved = client.retrieve_study(study_uid)
    assert {r.SOPInstanceUID for r in retrieved} == {s.SOPInstanceUID for s in series}
    metadata = client.retrieve_instance_metadata(
        study_uid, second.SeriesInstanceUID, second.SOPInstanceUID
    )
    assert metadata["00100020"]["Value"] == [second.PatientID]
    [frame] = client.retrieve_instance_frames(
        study_uid, second.SeriesInstanceUID, second.SOPInstanceUID, frame_numbers=[1]
    )
    assert frame == second.PixelData
    picture = client.retrieve_instance_rendered(
        ecg.StudyInstanceUID,
        ecg.SeriesInstanceUID,
        ecg.SOPInstanceUID,
        media_types=("image/png",),
    )
    assert picture[:8] == b"\x89PNG\r\n\x1a\n"


def _study_json(answers: list[dict[str, Any]], uid: str) -> dict[str, Any]:
    [found] = [a for a in answers if a["0020000D"]["Value"] == [uid]]
    return found


def test_our_qido_answers_match_orthancs_for_the_same_objects(
    live: str, token: str, tmp_path: Path
) -> None:
    import json
    import urllib.request

    files = [
        *copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 2, AccessionNumber="CMP1"),
        Path(pydicom.__file__).parent / "data" / "charset_files" / "chrX2.dcm",
    ]
    ours = DICOMwebClient(live, headers={"Authorization": f"Bearer {token}"})
    ours.store_instances([pydicom.dcmread(f) for f in files])
    with running_orthanc(tmp_path) as orthanc:
        for f in files:
            orthanc.upload(f)

        def theirs(path: str) -> list[dict[str, Any]]:
            with urllib.request.urlopen(f"{orthanc.dicomweb}{path}") as response:
                return json.loads(response.read())  # type: ignore[no-any-return]

        for uid in {str(pydicom.dcmread(f).StudyInstanceUID) for f in files}:
            mine = _study_json(
                ours.search_for_studies(search_filters={"StudyInstanceUID": uid}), uid
            )
            other = _study_json(theirs(f"/studies?StudyInstanceUID={uid}"), uid)
            for tag in (
                "00100010",  # PatientName: the GB18030 name as groups, exactly
                "00100020",
                "00080020",
                "00080050",
                "00080061",  # ModalitiesInStudy
                "00201206",  # NumberOfStudyRelatedSeries
                "00201208",  # NumberOfStudyRelatedInstances
            ):
                assert _plain(mine.get(tag)) == _plain(other.get(tag)), (uid, tag)


def _plain(element: dict[str, Any] | None) -> Any:
    """An element's values, numbers as numbers (Orthanc writes IS as strings) and person names
    without empty component groups (Orthanc writes "Phonetic": "")."""
    if not element or "Value" not in element:
        return None
    if element["vr"] == "PN":
        return [{k: v for k, v in name.items() if v} for name in element["Value"]]
    return [int(v) if element["vr"] == "IS" else v for v in element["Value"]]


def test_orthanc_pulls_a_study_from_us_over_dicomweb(live: str, token: str, tmp_path: Path) -> None:
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 3)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    DICOMwebClient(live, headers={"Authorization": f"Bearer {token}"}).store_instances(
        [pydicom.dcmread(f) for f in files]
    )
    server = {"Url": live, "HttpHeaders": {"Authorization": f"Bearer {token}"}}
    with running_orthanc(tmp_path, dicomweb_servers={"yilian": server}) as orthanc:
        answers = orthanc.post("/dicom-web/servers/yilian/qido", {"Uri": "/studies"})
        assert any(
            tag.get("Value") == study_uid for answer in answers for tag in answer.values()
        ), answers
        got = orthanc.post(
            "/dicom-web/servers/yilian/retrieve", {"Resources": [{"Study": study_uid}]}
        )
        assert int(got["ReceivedInstancesCount"]) == 3
        assert sorted(orthanc.instances()) == sorted(
            str(pydicom.dcmread(f).SOPInstanceUID) for f in files
        )


def test_a_rendered_ecg_through_the_library(live: str, token: str) -> None:
    client = DICOMwebClient(live, headers={"Authorization": f"Bearer {token}"})
    ecg = pydicom.dcmread(sample("waveform_ecg.dcm"))
    client.store_instances([ecg])
    jpeg = client.retrieve_instance_rendered(
        ecg.StudyInstanceUID, ecg.SeriesInstanceUID, ecg.SOPInstanceUID
    )
    import io

    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size[0] > image.size[1]
