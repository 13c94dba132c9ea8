"""DICOMweb at /dicomweb through the HTTP API: QIDO-RS, WADO-RS, WADO-URI and STOW-RS, with the
access rules and the audit of the FHIR API."""

from __future__ import annotations

import email.parser
import email.policy
import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
from PIL import Image
from sqlalchemy import select

from gateway.context import Context
from records import schema
from tests.dicom.conftest import IR58_STUDY
from tests.dicom.test_scp import copy_with_new_uids, dataset_bytes, sample

JSON = {"Accept": "application/dicom+json"}
DICOM_AS = 'multipart/related; type="application/dicom"; transfer-syntax='
EXPLICIT_LE, JPEG_BASELINE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"


def parts(response: Any) -> list[tuple[str, bytes]]:
    """The parts of a multipart/related response: (content type, body)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: "
        + response.headers["content-type"].encode()
        + b"\r\n\r\n"
        + response.content
    )
    assert message.is_multipart(), response.headers["content-type"]
    return [
        (p.get_content_type() + _syntax(p), p.get_payload(decode=True))
        for p in message.iter_parts()
    ]


def _syntax(part: Any) -> str:
    syntax = part.get_param("transfer-syntax")
    return f";{syntax}" if syntax else ""


def multipart_request(*bodies: bytes, part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = "test-boundary-7d3f"
    out = b""
    for body in bodies:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + body + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f'multipart/related; type="application/dicom"; boundary={boundary}'


@pytest.fixture
def doctor(as_user) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return as_user("doctor.xingfu")


def value(element: dict[str, Any]) -> Any:
    return element["Value"][0]


def study_of(client: Any, headers: dict[str, str], **params: str) -> dict[str, Any]:
    found = client.get("/dicomweb/studies", params=params, headers={**headers, **JSON})
    assert found.status_code == 200, found.text
    assert len(found.json()) == 1, found.json()
    return found.json()[0]  # type: ignore[no-any-return]


# -- QIDO-RS ---------------------------------------------------------------------------------------


def test_qido_studies_with_chinese_names_exact(filed: Context, client: Any, doctor) -> None:  # type: ignore[no-untyped-def]
    found = client.get("/dicomweb/studies", headers={**doctor, **JSON})
    assert found.status_code == 200
    assert found.headers["content-type"].startswith("application/dicom+json")
    assert len(found.json()) == 7
    gb18030 = study_of(client, doctor, PatientID="X2EXAMPLE")
    assert value(gb18030["00100010"]) == {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"}
    ir58 = study_of(client, doctor, StudyInstanceUID=f"{IR58_STUDY}.1")
    assert value(ir58["00100010"]) == {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"}
    utf8 = study_of(client, doctor, PatientID="X1EXAMPLE")
    assert value(utf8["00100010"])["Ideographic"] == "王^小東"
    url = value(gb18030["00081190"])
    assert url.endswith(f"/dicomweb/studies/{value(gb18030['0020000D'])}")


def test_qido_matching_paging_and_fields(filed: Context, client: Any, doctor) -> None:  # type: ignore[no-untyped-def]
    def uids(path: str, **params: str) -> list[str]:
        found = client.get(path, params=params, headers=doctor)
        assert found.status_code == 200, found.text
        return [value(m["0020000D"]) for m in found.json()]

    assert len(uids("/dicomweb/studies", PatientName="王^小东")) == 2
    assert len(uids("/dicomweb/studies", **{"00100010": "wang*"})) == 3
    assert len(uids("/dicomweb/studies", PatientName="xiao dong", fuzzymatching="true")) == 3
    assert len(uids("/dicomweb/studies", ModalitiesInStudy="CT", StudyDate="2024-")) == 1
    first, second = uids("/dicomweb/studies", limit="4"), uids("/dicomweb/studies", offset="4")
    assert len(first) == 4 and len(second) == 3 and not set(first) & set(second)
    study = study_of(client, doctor, AccessionNumber="XF2024")
    uid = value(study["0020000D"])
    assert value(study["00201208"]) == 3  # NumberOfStudyRelatedInstances
    series = client.get(f"/dicomweb/studies/{uid}/series", headers=doctor).json()
    assert [value(s["00080060"]) for s in series] == ["CT"]
    series_uid = value(series[0]["0020000E"])
    found = client.get(
        f"/dicomweb/studies/{uid}/series/{series_uid}/instances",
        params={"includefield": "Rows,00280011"},
        headers=doctor,
    ).json()
    assert [value(i["00200013"]) for i in found] == [1, 2, 3]
    assert value(found[0]["00280010"]) == 128 and value(found[0]["00280011"]) == 128
    assert value(found[0]["00081190"]).endswith(
        f"/studies/{uid}/series/{series_uid}/instances/{value(found[0]['00080018'])}"
    )


def test_qido_says_what_is_wrong_with_a_query(filed: Context, client: Any, doctor) -> None:  # type: ignore[no-untyped-def]
    bad = client.get("/dicomweb/studies", params={"PatientAge": "040Y"}, headers=doctor)
    assert bad.status_code == 400
    assert "PatientAge" in bad.json()["issue"][0]["diagnostics"]
    assert client.get("/dicomweb/studies", params={"limit": "x"}, headers=doctor).status_code == 400
    xml = client.get("/dicomweb/studies", headers={**doctor, "Accept": "application/dicom+xml"})
    assert xml.status_code == 406


def test_dicomweb_needs_a_token_and_follows_the_access_rules(
    filed: Context, client: Any, as_user: Any
) -> None:
    assert client.get("/dicomweb/studies").status_code == 401
    assert client.get("/dicomweb/studies", headers=as_user("admin")).status_code == 403
    # the specialist has nothing routed to the city hospital yet; the resident's own record
    # holds no images: for both, nothing exists
    for user in ("specialist.city", "resident.wang"):
        found = client.get("/dicomweb/studies", headers=as_user(user))
        assert found.status_code == 200 and found.json() == [], user
    study = study_of(client, as_user("doctor.xingfu"), AccessionNumber="XF2024")
    hidden = client.get(
        f"/dicomweb/studies/{value(study['0020000D'])}/metadata", headers=as_user("specialist.city")
    )
    assert hidden.status_code == 404


def test_a_refused_search_is_audited(filed: Context, client: Any, as_user: Any) -> None:
    assert client.get("/dicomweb/studies", headers=as_user("admin")).status_code == 403
    with filed.engine.connect() as conn:
        outcomes = (
            conn.execute(
                select(schema.audit_record.c.outcome).where(
                    schema.audit_record.c.action == "dicom-search",
                    schema.audit_record.c.actor == "admin",
                )
            )
            .scalars()
            .all()
        )
    assert outcomes == ["refused"]


def test_searches_and_retrieves_are_audited_with_the_patient(
    filed: Context, client: Any, doctor
) -> None:  # type: ignore[no-untyped-def]
    study = study_of(client, doctor, AccessionNumber="XF2024")
    uid = value(study["0020000D"])
    assert client.get(f"/dicomweb/studies/{uid}", headers=doctor).status_code == 200
    with filed.engine.connect() as conn:
        rows = list(
            conn.execute(
                select(schema.audit_record).where(
                    schema.audit_record.c.action.in_(["dicom-search", "dicom-retrieve"])
                )
            )
        )
    retrieve = [r for r in rows if r.action == "dicom-retrieve"]
    assert retrieve and all(r.patient for r in retrieve)
    assert any(f"urn:oid:{uid}" in r.resources for r in retrieve)
    assert {r.actor for r in rows} == {"doctor.xingfu"}


# -- WADO-RS and WADO-URI --------------------------------------------------------------------------


def _instance_url(client: Any, headers: dict[str, str], **params: str) -> str:
    found = client.get("/dicomweb/instances", params=params, headers=headers)
    assert found.status_code == 200 and len(found.json()) == 1, found.text
    return str(value(found.json()[0]["00081190"])).split("/dicomweb", 1)[1]


def test_wado_returns_the_stored_bytes_of_a_study(filed: Context, client: Any, doctor) -> None:  # type: ignore[no-untyped-def]
    study = study_of(client, doctor, PatientID="X2EXAMPLE")
    got = client.get(f"/dicomweb/studies/{value(study['0020000D'])}", headers=doctor)
    assert got.status_code == 200
    assert got.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    [(content_type, body)] = parts(got)
    assert content_type.startswith("application/dicom")
    original = Path(pydicom.__file__).parent / "data" / "charset_files" / "chrX2.dcm"
    stored = pydicom.dcmread(io.BytesIO(body))
    assert stored.SOPInstanceUID == pydicom.dcmread(original).SOPInstanceUID
    assert dataset_bytes_of(body) == dataset_bytes(original)


def dataset_bytes_of(data: bytes) -> bytes:
    path = Path("/tmp") / f"wado-{id(data)}.dcm"
    path.write_bytes(data)
    try:
        return dataset_bytes(path)
    finally:
        path.unlink()


def test_wado_transcodes_a_compressed_instance_to_explicit_little_endian(
    demo: Context, client: Any, doctor, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    source = sample("MR_small_jp2klossless.dcm")
    body, content_type = multipart_request(source.read_bytes())
    stored = client.post(
        "/dicomweb/studies", content=body, headers={**doctor, "Content-Type": content_type}
    )
    assert stored.status_code == 200, stored.text
    path = _instance_url(client, doctor, SOPInstanceUID=pydicom.dcmread(source).SOPInstanceUID)
    any_syntax = {**doctor, "Accept": DICOM_AS + "*"}
    as_stored = parts(client.get(f"/dicomweb{path}", headers=any_syntax))
    assert as_stored[0][0] == "application/dicom;1.2.840.10008.1.2.4.90"
    # naming no transfer syntax means Explicit VR Little Endian (PS3.18 8.7.3.5.2)
    native = client.get(f"/dicomweb{path}", headers=doctor)
    [(content_type, data)] = parts(native)
    assert content_type == "application/dicom;1.2.840.10008.1.2.1"
    decoded = pydicom.dcmread(io.BytesIO(data))
    assert decoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    original = pydicom.dcmread(source)
    assert (decoded.pixel_array == original.pixel_array).all()
    refused = client.get(
        f"/dicomweb{path}",
        headers={
            **doctor,
            "Accept": DICOM_AS + JPEG_BASELINE,
        },
    )
    assert refused.status_code == 406


def test_metadata_frames_and_rendered(filed: Context, client: Any, doctor) -> None:  # type: ignore[no-untyped-def]
    path = _instance_url(client, doctor, PatientID="1CT1", InstanceNumber="2")
    metadata = client.get(f"/dicomweb{path}/metadata", headers=doctor)
    assert metadata.status_code == 200
    [header] = metadata.json()
    assert value(header["00100020"]) == "1CT1" and "7FE00010" not in header
    frames = client.get(f"/dicomweb{path}/frames/1", headers=doctor)
    assert frames.status_code == 200
    [(content_type, pixels)] = parts(frames)
    assert content_type.startswith("application/octet-stream")
    ct = pydicom.dcmread(sample("CT_small.dcm"))
    assert pixels == ct.PixelData
    assert client.get(f"/dicomweb{path}/frames/2", headers=doctor).status_code == 400
    twice = client.get(f"/dicomweb{path}/frames/1,1", headers=doctor)
    assert len(parts(twice)) == 1  # each frame once
    jls = {**doctor, "Accept": 'multipart/related; type="image/jls"'}
    assert client.get(f"/dicomweb{path}/frames/1", headers=jls).status_code == 406
    png = client.get(
        f"/dicomweb{path}/rendered",
        params={"window": "40,400", "viewport": "64,64"},
        headers={**doctor, "Accept": "image/png"},
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    jpeg = client.get(f"/dicomweb{path}/frames/1/rendered", headers=doctor)
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).format == "JPEG"


def test_an_ecg_renders_as_a_12_lead_tracing(filed: Context, client: Any, doctor) -> None:  # type: ignore[no-untyped-def]
    path = _instance_url(client, doctor, PatientID="642341")
    png = client.get(f"/dicomweb{path}/rendered", headers={**doctor, "Accept": "image/png"})
    assert png.status_code == 200
    image = Image.open(io.BytesIO(png.content))
    # 10 s of rhythm strip at 25 mm/s is 250 mm: wider than 900 px at 100 dpi
    assert image.size[0] > 900 and image.size[0] > image.size[1]


def test_wado_uri(filed: Context, client: Any, doctor) -> None:  # type: ignore[no-untyped-def]
    path = _instance_url(client, doctor, AccessionNumber="XF2024", InstanceNumber="1")
    _, study, _, series, _, sop = path.strip("/").split("/")
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    whole = client.get(
        "/dicomweb/wado", params={**params, "contentType": "application/dicom"}, headers=doctor
    )
    assert whole.status_code == 200
    assert pydicom.dcmread(io.BytesIO(whole.content)).SOPInstanceUID == sop
    picture = client.get(
        "/dicomweb/wado",
        params={**params, "windowCenter": "40", "windowWidth": "400", "rows": "32"},
        headers=doctor,
    )
    assert picture.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(picture.content)).size == (32, 32)
    bad = client.get("/dicomweb/wado", params={**params, "requestType": "X"}, headers=doctor)
    assert bad.status_code == 400


# -- STOW-RS ---------------------------------------------------------------------------------------


def test_stow_files_what_it_can_and_names_what_it_cannot(
    demo: Context, client: Any, doctor
) -> None:  # type: ignore[no-untyped-def]
    ecg = sample("waveform_ecg.dcm").read_bytes()
    body, content_type = multipart_request(ecg, b"not DICOM at all")
    stored = client.post(
        "/dicomweb/studies", content=body, headers={**doctor, "Content-Type": content_type}
    )
    assert stored.status_code == 202, stored.text
    answer = stored.json()
    [ok] = answer["00081199"]["Value"]
    sop = pydicom.dcmread(io.BytesIO(ecg)).SOPInstanceUID
    assert value(ok["00081155"]) == sop
    assert value(ok["00081150"]) == "1.2.840.10008.5.1.4.1.1.9.1.1"
    [failed] = answer["00081198"]["Value"]
    assert value(failed["00081197"]) == 0xC000
    # filed like a C-STORE: the ECG Observation is in the record, the sender's user audited
    observations = client.get(
        "/fhir/Observation", params={"code": "http://loinc.org|11524-6"}, headers=doctor
    )
    assert observations.json()["total"] == 1
    with demo.engine.connect() as conn:
        store_events = (
            conn.execute(
                select(schema.audit_record.c.actor).where(
                    schema.audit_record.c.action == "dicom-store"
                )
            )
            .scalars()
            .all()
        )
    assert "doctor.xingfu" in store_events
    again = client.post(
        f"/dicomweb/studies/{pydicom.dcmread(io.BytesIO(ecg)).StudyInstanceUID}",
        content=multipart_request(ecg)[0],
        headers={**doctor, "Content-Type": content_type},
    )
    assert again.status_code == 200  # a repeat stores nothing and succeeds


def test_stow_refuses_who_may_not_store_and_bodies_that_are_not_multipart(
    demo: Context, client: Any, as_user: Any
) -> None:
    body, content_type = multipart_request(sample("CT_small.dcm").read_bytes())
    resident = client.post(
        "/dicomweb/studies",
        content=body,
        headers={**as_user("resident.wang"), "Content-Type": content_type},
    )
    assert resident.status_code == 403
    plain = client.post(
        "/dicomweb/studies",
        content=sample("CT_small.dcm").read_bytes(),
        headers={**as_user("doctor.xingfu"), "Content-Type": "application/dicom"},
    )
    assert plain.status_code == 415
    other_study = client.post(
        "/dicomweb/studies/1.2.3.4",
        content=body,
        headers={**as_user("doctor.xingfu"), "Content-Type": content_type},
    )
    assert other_study.status_code == 409
    assert value(other_study.json()["00081198"]["Value"][0]["00081197"]) == 0xA900


def test_stow_refuses_an_object_of_a_patient_outside_the_senders_reach(
    demo: Context, client: Any, doctor, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from gateway.demo import resident_id
    from records import store
    from records.identity import RESIDENT_ID_SYSTEM

    number = resident_id("110101", "1961-03-07", "123")
    city_patient = {
        "resourceType": "Patient",
        "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": number}],
        "name": [{"text": "赵六"}],
        "managingOrganization": {"reference": "Organization/CITY-FIRST"},
    }
    with demo.engine.begin() as conn:
        store.write(conn, "Patient", "city-zhao", city_patient, "PUT")
    [ct] = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 1, PatientID=number)
    body, content_type = multipart_request(ct.read_bytes())
    refused = client.post(
        "/dicomweb/studies", content=body, headers={**doctor, "Content-Type": content_type}
    )
    assert refused.status_code == 409, refused.text
    [failed] = refused.json()["00081198"]["Value"]
    assert value(failed["00081197"]) == 0x0124
    assert "outside" in value(failed["00091001"])
    with demo.engine.connect() as conn:
        assert conn.execute(select(schema.dicom_instance.c.sop_uid)).first() is None
    # the clinic's own resident is filed as usual
    (tmp_path / "own").mkdir()
    [own] = copy_with_new_uids(sample("CT_small.dcm"), tmp_path / "own", 1)
    body, content_type = multipart_request(own.read_bytes())
    filed = client.post(
        "/dicomweb/studies", content=body, headers={**doctor, "Content-Type": content_type}
    )
    assert filed.status_code == 200, filed.text


def test_stow_answers_413_above_the_configured_size_and_keeps_nothing(
    demo: Context, client: Any, doctor, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(demo.settings, "dicom_stow_max_bytes", 1024 * 1024)
    big = sample("CT_small.dcm").read_bytes()
    body, content_type = multipart_request(*[big] * 30)  # ~1.2 MB
    refused = client.post(
        "/dicomweb/studies", content=body, headers={**doctor, "Content-Type": content_type}
    )
    assert refused.status_code == 413
    assert "YILIAN_DICOM_STOW_MAX_BYTES" in refused.json()["issue"][0]["diagnostics"]
    assert list(demo.dicom.store.scratch().iterdir()) == []
