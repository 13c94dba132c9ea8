"""Remote diagnosis between two real member gateways: a township's and a tertiary hospital's,
each a ``yilian serve`` process with its own data folder, database, keys and certificates,
talking HTTPS with mutual TLS and DICOM over TLS, with the delivery workers of ``yilian serve``
doing the carrying (nothing is driven by hand).

- the issue's "done means": the township doctor stores an ECG and a CT series with dcmtk's
  storescu, asks for remote ECG and imaging diagnosis while the link to the hospital is cut
  (the hospital gateway stopped with SIGTERM), the outbox shows the rows waiting with the
  connection error; the hospital comes back and gets everything once; its specialist works the
  worklist, sees the images, reports in Chinese; the signed reports come back into the
  resident's record, where the doctor and the resident read them and the signature holds;
- a fault drill: the township gateway is SIGKILLed while a 40-image series is on its way, then
  started again: the images arrive, each once, and the request once;
- a fault drill: requests cancelled while the hospital is down, one between two attempts and
  one while its images are in flight to a DICOM service that then fails them, never reach the
  hospital (no Task, no image, no message, no dead letter); one cancelled after delivery
  reaches it as cancelled.

Each gateway's log is kept in its folder (``serve.log``); a failing test shows their tails.
"""

from __future__ import annotations

import json
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicom.ingest import AE_SYSTEM
from gateway import demo
from gateway.context import Context
from records import inbound, store, users
from security import signing
from security.principal import Role
from teleconsult import directory
from teleconsult.messages import REQUEST_KEY_SYSTEM
from teleconsult.portable import signed_form
from tests.dicom.peers import dcmtk
from tests.dicom.test_scp import copy_with_new_uids, sample
from tests.teleconsult.processes import Gateway, gateways, in_parallel, until
from tests.tls import TestCA, make_ca

pytestmark = pytest.mark.slow

TOWNSHIP, HOSPITAL = "XINGFU_THC", "CITY_FIRST"
PATIENT = "demo-wang-xiuying"  # 王秀英, a resident of Xingfu
ECG_CODE = "http://loinc.org|11524-6"
# both departments of City First read all day, every day: the routing clock of a real process
# cannot be fixed, and the consultation centre is on duty on weekdays only
RULES = """
[[rule]]
name = "ECG and imaging to City First"
kind = ["imaging", "ecg"]
to = ["CITY_FIRST"]
"""
# what each member issued to the other's gateway (`yilian users add NAME --role peer --client`)
CLIENT_AT_HOSPITAL = ("xingfu-gateway", "secret-of-xingfu-at-city-first")
CLIENT_AT_TOWNSHIP = ("city-first-gateway", "secret-of-city-first-at-xingfu")
ECG_CONCLUSION = "窦性心律，ST段轻度压低（V4–V6），建议随访复查"
CT_CONCLUSION = "颅内未见明显异常密度影，脑室系统无扩大，建议结合临床"
_T0 = [time.monotonic()]


def lap(what: str) -> None:
    """Print how far the test has gone (shown with a failing test's output)."""
    print(f"{time.monotonic() - _T0[0]:6.1f} s  {what}")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("consortium-ca"), clients=[TOWNSHIP, HOSPITAL])


@pytest.fixture
def pair(tmp_path: Path, ca: TestCA) -> Iterator[tuple[Gateway, Gateway]]:
    """Township and hospital gateways, configured, not yet serving (always stopped after)."""
    rules = tmp_path / "routing.toml"
    rules.write_text(RULES)
    township_spec = {
        "code": TOWNSHIP,
        "dicom_ae": "XINGFU_GW",
        "dicom_tls": False,  # the clinic's own devices send plain DICOM on its LAN
        "routing_rules": rules,
        "credentials": {
            HOSPITAL: {"client_id": CLIENT_AT_HOSPITAL[0], "client_secret": CLIENT_AT_HOSPITAL[1]}
        },
    }
    hospital_spec = {
        "code": HOSPITAL,
        "dicom_ae": "CITY_FIRST_GW",
        "routing_rules": rules,
        "credentials": {
            TOWNSHIP: {"client_id": CLIENT_AT_TOWNSHIP[0], "client_secret": CLIENT_AT_TOWNSHIP[1]}
        },
    }
    with gateways(tmp_path, ca, township_spec, hospital_spec) as (township, hospital):
        yield township, hospital


# -- preparing the two members before they serve ------------------------------------------------


def configure_with_commands(township: Gateway, hospital: Gateway, folder: Path) -> None:
    """What the two operators do at their consoles: the demo consortium, a peer client for the
    other member, where the other member is, and the hospital's report-signing key trusted at
    the township."""
    key_file = folder / "city-first-report-key.json"

    def at_hospital() -> None:
        name, secret = CLIENT_AT_HOSPITAL
        *_, key = hospital.commands(
            ["demo"],
            ["users", "add", name, "--role", "peer", "--org", TOWNSHIP, "--client",
             "--password", secret],
            ["consortium", "endpoint", TOWNSHIP, "--fhir", township.fhir_base],
            ["consortium", "key"],
        )  # fmt: skip
        key_file.write_text(key)

    def at_township() -> None:
        name, secret = CLIENT_AT_TOWNSHIP
        township.commands(
            ["demo"],
            ["users", "add", name, "--role", "peer", "--org", HOSPITAL, "--client",
             "--password", secret],
            ["consortium", "endpoint", HOSPITAL, "--fhir", hospital.fhir_base,
             "--dicom", hospital.dicom_address],
        )  # fmt: skip

    in_parallel(at_hospital, at_township)
    trusted, listed = township.commands(
        ["consortium", "trust", HOSPITAL, str(key_file)], ["consortium", "list"]
    )
    assert "reports are now checked with this key" in trusted
    assert f"CITY-FIRST       fhir   on  {hospital.fhir_base}" in listed, listed
    assert hospital.dicom_address in listed, listed


def _gateway_device(ae_title: str) -> dict[str, Any]:
    """The township gateway's calling AE title, one of Xingfu's devices at the hospital."""
    return {
        "resourceType": "Device",
        "identifier": [{"system": AE_SYSTEM, "value": ae_title}],
        "status": "active",
        "deviceName": [{"name": "幸福镇卫生院 医联网关", "type": "user-friendly-name"}],
        "owner": {"reference": f"Organization/{demo.org(TOWNSHIP)}"},
    }


def configure_in_process(township: Gateway, hospital: Gateway) -> None:
    """The same configuration written straight into each member's record (faster)."""
    with _context(hospital) as ctx:
        demo.load(ctx)
        with ctx.engine.begin() as conn:
            name, secret = CLIENT_AT_HOSPITAL
            users.add(conn, name, secret, Role.PEER, demo.org(TOWNSHIP), kind="client")
            _endpoint(conn, TOWNSHIP, directory.FHIR, township.fhir_base)
            store.write(conn, "Device", "xingfu-gateway", _gateway_device(township.dicom_ae), "PUT")
        key = ctx.teleconsult.public_jwk()
    with _context(township) as ctx:
        demo.load(ctx)
        with ctx.engine.begin() as conn:
            name, secret = CLIENT_AT_TOWNSHIP
            users.add(conn, name, secret, Role.PEER, demo.org(HOSPITAL), kind="client")
            _endpoint(conn, HOSPITAL, directory.FHIR, hospital.fhir_base)
            _endpoint(conn, HOSPITAL, directory.DICOM, hospital.dicom_address)
            org = store.read(conn, "Organization", demo.org(HOSPITAL)).json()
            org = directory.with_trusted_key(org, key)
            store.write(conn, "Organization", demo.org(HOSPITAL), org, "PUT")


@contextmanager
def _context(gateway: Gateway) -> Iterator[Context]:
    """A member's Context in the test's process while it is not serving."""
    assert not gateway.running, f"{gateway.code} is serving"
    ctx = Context.build(gateway.settings())
    try:
        yield ctx
    finally:
        ctx.close()


def _endpoint(conn: Any, member: str, kind: str, address: str) -> None:
    organization = demo.org(member)
    body = directory.endpoint_body(organization, kind, address, active=True)
    store.write(conn, "Endpoint", directory.endpoint_id(organization, kind), body, "PUT")


# -- the township's devices and doctor ----------------------------------------------------------


def resident_number(township: Gateway, doctor: dict[str, str]) -> str:
    with township.client() as api:
        patient = api.get(f"/fhir/Patient/{PATIENT}", headers=doctor)
    assert patient.status_code == 200, patient.text
    [number] = [
        i["value"]
        for i in patient.json()["identifier"]
        if i["system"] == "urn:oid:2.16.156.10011.1.3"
    ]
    return str(number)


def storescu(township: Gateway, calling_ae: str, files: list[Path]) -> None:
    """A township device sends by C-STORE (dcmtk, plain DICOM on the clinic's network)."""
    done = dcmtk(
        "storescu", "-aet", calling_ae, "-aec", township.dicom_ae,
        "127.0.0.1", str(township.dicom_port), *map(str, files),
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "error" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr


def ct_series(folder: Path, count: int, number: str) -> tuple[str, list[str], list[Path]]:
    """``count`` copies of pydicom's CT_small.dcm in a new study of the resident:
    (Study Instance UID, SOP Instance UIDs, files)."""
    folder.mkdir(parents=True)
    files = copy_with_new_uids(sample("CT_small.dcm"), folder, count, PatientID=number)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    return study, uids, files


def ecg_file(folder: Path, number: str) -> tuple[pydicom.Dataset, Path]:
    """pydicom's 12-lead ECG (a Mortara cart's), of the resident, with new UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(shutil.copy(sample("waveform_ecg.dcm"), folder / "ecg.dcm"))
    ds = pydicom.dcmread(path)
    ds.PatientID = number
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(path)
    return ds, path


def imaging_study_id(member: Gateway, user: dict[str, str], study_uid: str, n: int) -> str:
    """A member's ImagingStudy of a Study Instance UID, once all ``n`` instances show (counted
    once the associations that brought them have ended and been quiet)."""

    def probe() -> str | None:
        with member.client() as api:
            found = api.get(
                "/fhir/ImagingStudy",
                params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"},
                headers=user,
            ).json()
        entries = found.get("entry") or []
        if len(entries) == 1 and entries[0]["resource"].get("numberOfInstances") == n:
            return str(entries[0]["resource"]["id"])
        return None

    return until(f"the ImagingStudy of {study_uid} with {n} instances", probe, timeout=30)


def ecg_observation_id(township: Gateway, doctor: dict[str, str]) -> str:
    with township.client() as api:
        found = api.get(
            "/fhir/Observation",
            params={"subject": f"Patient/{PATIENT}", "code": ECG_CODE},
            headers=doctor,
        ).json()
    [entry] = found.get("entry") or [None]
    assert entry is not None, found
    return str(entry["resource"]["id"])


def request(township: Gateway, doctor: dict[str, str], **form: Any) -> dict[str, Any]:
    with township.client() as api:
        made = api.post(
            "/api/teleconsult/requests", json={"patient": PATIENT, **form}, headers=doctor
        )
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["routing"]["organization"] == HOSPITAL, body["routing"]
    return dict(body["task"])


def task(gateway: Gateway, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    with gateway.client() as api:
        found = api.get(f"/fhir/Task/{task_id}", headers=headers)
    assert found.status_code == 200, found.text
    return dict(found.json())


def task_in_status(
    gateway: Gateway, headers: dict[str, str], task_id: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = task(gateway, headers, task_id)
        return body if body["status"] == status else None

    return until(f"Task/{task_id} at {gateway.code} to be {status}", probe, timeout=timeout)


def all_delivered(gateway: Gateway, timeout: float = 60, **filters: Any) -> list[Any]:
    def probe() -> list[Any] | None:
        rows = gateway.outbox(**filters)
        return rows if rows and all(r.status == "delivered" for r in rows) else None

    try:
        return until(f"{gateway.code}'s outbox to be delivered", probe, timeout=timeout)
    except AssertionError:
        rows = [
            (r.topic, r.destination, r.status, r.attempts, r.last_error) for r in gateway.outbox()
        ]
        raise AssertionError(f"{gateway.code}'s outbox never emptied: {rows}") from None


def operation(
    gateway: Gateway, headers: dict[str, str], task_id: str, op: str, reason: str | None = None
) -> dict[str, Any]:
    body = None
    if reason:
        body = {
            "resourceType": "Parameters",
            "parameter": [{"name": "reason", "valueString": reason}],
        }
    with gateway.client() as api:
        done = api.post(f"/fhir/Task/{task_id}/${op}", json=body, headers=headers)
    assert done.status_code == 200, (op, done.text)
    return dict(done.json())


# -- 1. the "done means" ---------------------------------------------------------------


def test_the_whole_story_with_the_link_cut_once(pair, ca, tmp_path: Path) -> None:
    township, hospital = pair
    _T0[0] = time.monotonic()
    configure_with_commands(township, hospital, tmp_path)
    lap("configured with the yilian commands")

    # the hospital's operator registers the township gateway's calling AE title as a device of
    # Xingfu (FHIR, as the demo admin), then the link is cut: the hospital gateway stops
    hospital.start()
    with hospital.client() as api:
        put = api.put(
            "/fhir/Device/xingfu-gateway",
            json=_gateway_device(township.dicom_ae) | {"id": "xingfu-gateway"},
            headers={**hospital.login("admin"), "Content-Type": "application/fhir+json"},
        )
    assert put.status_code in (200, 201), put.text
    assert hospital.stop() == 0, hospital.tail()  # SIGTERM: a clean stop
    lap("hospital started, device registered, stopped")

    township.start()
    doctor = township.login("doctor.xingfu")
    number = resident_number(township, doctor)
    ct_uid, ct_sops, ct_files = ct_series(tmp_path / "ct", 3, number)
    ecg, ecg_path = ecg_file(tmp_path / "ecg", number)
    storescu(township, "XINGFU_CT", ct_files)
    storescu(township, "XINGFU_ECG", [ecg_path])
    study_id = imaging_study_id(township, doctor, ct_uid, 3)
    observation_id = ecg_observation_id(township, doctor)
    lap("township started, studies stored")

    imaging = request(
        township, doctor, kind="imaging", studies=[study_id], priority="urgent",
        question="头晕伴呕吐两天，请协助阅读头颅CT",
    )  # fmt: skip
    ecg_request = request(
        township, doctor, kind="ecg", observations=[observation_id], priority="stat",
        question="活动后胸闷，请判读十二导联心电图",
    )  # fmt: skip
    keys = {imaging["key"]: imaging, ecg_request["key"]: ecg_request}

    # the hospital is down: the rows wait, each destination's first one with the connection error
    def heads_failed() -> list[Any] | None:
        rows = township.outbox()
        failed = [r for r in rows if r.attempts >= 1 and r.last_error and not r.leased_by]
        return rows if len(rows) == 4 and len({r.destination for r in failed}) == 2 else None

    rows = until("both destinations to have failed once", heads_failed, timeout=30)
    assert {(r.topic, r.destination) for r in rows} == {
        ("request", "CITY-FIRST-fhir"),
        ("images", "CITY-FIRST-dicom"),
    }
    assert all(r.status == "pending" for r in rows), rows
    for row in rows:
        if row.last_error:
            assert "connect" in row.last_error, row.last_error
    listed = township.yilian("outbox", "list", "--status", "pending").stdout
    assert "pending 4" in listed and "cannot connect" in listed, listed
    for made in keys.values():
        assert task(township, doctor, made["id"])["status"] == "requested"

    lap("rows waiting with the connection error")

    # the link comes back: everything arrives, once
    hospital.start()
    lap("hospital started again")
    delivered = all_delivered(township)
    lap("everything delivered")
    assert len(delivered) == 4
    assert any(r.attempts > 1 for r in delivered)  # they did fail before
    for made in keys.values():
        task_in_status(township, doctor, made["id"], "received")

    # the specialist's worklist: the stat ECG before the urgent CT, the resident by name
    specialist = hospital.login("specialist.city")
    with hospital.client() as api:

        def two_waiting() -> list[dict[str, Any]] | None:
            items = api.get("/api/teleconsult/worklist", headers=specialist).json()
            return items if len(items) == 2 else None

        worklist = until("two requests on the worklist", two_waiting, timeout=30)
        assert [(w["kind"], w["priority"]) for w in worklist] == [
            ("ecg", "stat"),
            ("imaging", "urgent"),
        ]
        assert [w["key"] for w in worklist] == [ecg_request["key"], imaging["key"]]
        assert {w["patient_name"] for w in worklist} == {"王秀英"}
        assert {w["status"] for w in worklist} == {"received"}
        patient = worklist[0]["patient"]

        # ... and sees the studies: FHIR ImagingStudy, QIDO-RS, the ECG drawn as a tracing
        studies = api.get(
            "/fhir/ImagingStudy", params={"subject": patient}, headers=specialist
        ).json()
        assert studies.get("total") == 2, studies
        instances = api.get(f"/dicomweb/studies/{ct_uid}/instances", headers=specialist)
        assert instances.status_code == 200, instances.text
        assert sorted(i["00080018"]["Value"][0] for i in instances.json()) == sorted(ct_sops)
        tracing = api.get(
            f"/dicomweb/studies/{ecg.StudyInstanceUID}/series/{ecg.SeriesInstanceUID}"
            f"/instances/{ecg.SOPInstanceUID}/rendered",
            headers={**specialist, "Accept": "image/png"},
        )
        assert tracing.status_code == 200, tracing.text
        assert tracing.content.startswith(b"\x89PNG")
        observations = api.get(
            "/fhir/Observation", params={"subject": patient, "code": ECG_CODE}, headers=specialist
        ).json()
        assert observations.get("total") == 1, observations

        # accept, start and report each one
        for item, conclusion in zip(worklist, (ECG_CONCLUSION, CT_CONCLUSION), strict=True):
            assert operation(hospital, specialist, item["id"], "accept")["status"] == "accepted"
            assert operation(hospital, specialist, item["id"], "start")["status"] == "in-progress"
            written = api.post(
                f"/api/teleconsult/requests/{item['id']}/report",
                json={"conclusion": conclusion},
                headers=specialist,
            )
            assert written.status_code == 201, written.text
            assert written.json()["task"]["status"] == "completed"

    lap("reports written")

    # the reports come back into the resident's record at the township
    hospital_key = json.loads((tmp_path / "city-first-report-key.json").read_text())
    trusted = {hospital_key["kid"]: signing.public_key_from_jwk(hospital_key)}
    resident = township.login("resident.wang")
    for made, conclusion in ((ecg_request, ECG_CONCLUSION), (imaging, CT_CONCLUSION)):
        done = task_in_status(township, doctor, made["id"], "completed")
        report_ref = done["output"][0]["valueReference"]["reference"]
        with township.client() as api:
            for reader in (doctor, resident):
                read = api.get(f"/fhir/{report_ref}", headers=reader)
                assert read.status_code == 200, read.text
                report = read.json()
                assert report["conclusion"] == conclusion
                assert report["subject"]["reference"] == f"Patient/{PATIENT}"
                assert report["performer"][0]["display"] == "张敏"
            provenance = api.get(
                "/fhir/Provenance", params={"target": report_ref}, headers=doctor
            ).json()
        [signature] = provenance["entry"][0]["resource"]["signature"]
        signing.verify_signature(signed_form(report), signature, trusted)
        with pytest.raises(signing.SignatureInvalid):
            altered = {**report, "conclusion": "未见异常"}
            signing.verify_signature(signed_form(altered), signature, trusted)

    # the doctor was told of each step without asking: the hospital had it, accepted, reported
    with township.client() as api:
        told = api.get("/api/notifications", params={"_count": 50}, headers=doctor)
    assert told.status_code == 200, told.text
    for made in (ecg_request, imaging):
        codes = sorted(n["code"] for n in told.json()["items"] if n["task"] == made["id"])
        assert codes == ["accepted", "received", "reported"], codes

    # nothing twice at the hospital: one Task per request, each instance once, each message once
    for key in keys:
        assert hospital.tasks_for(key) == 1
        assert hospital.count_by_identifier("ServiceRequest", REQUEST_KEY_SYSTEM, key) == 1
    assert hospital.sop_counts(ct_uid) == dict.fromkeys(ct_sops, 1)
    assert hospital.sop_counts(str(ecg.StudyInstanceUID)) == {str(ecg.SOPInstanceUID): 1}
    for receiver, expected in ((hospital, 2), (township, 6)):  # 2 requests; 2 x (2 status + report)
        with receiver.engine.connect() as conn:
            _, archived = inbound.listing(conn, protocol="fhir-msg", limit=100)
        assert len(archived) == expected, [(a.message_type, a.outcome) for a in archived]
        assert len({a.control_id for a in archived}) == expected
        assert {a.outcome for a in archived} == {"accepted"}
    all_delivered(hospital)


# -- 2. the sender killed while the images are on their way ----------------------------------


def test_the_sender_killed_mid_delivery_resumes_without_duplicates(pair, tmp_path: Path) -> None:
    township, hospital = pair
    configure_in_process(township, hospital)
    in_parallel(township.start, hospital.start)
    doctor = township.login("doctor.xingfu")
    number = resident_number(township, doctor)
    count = 40
    ct_uid, ct_sops, ct_files = ct_series(tmp_path / "ct", count, number)
    storescu(township, "XINGFU_CT", ct_files)
    study_id = imaging_study_id(township, doctor, ct_uid, count)

    made = request(township, doctor, kind="imaging", studies=[study_id], priority="urgent")

    # SIGKILL while the images row is leased and some, not all, instances have arrived
    def in_flight() -> tuple[Any, int] | None:
        rows = township.outbox(status="pending", subject=made["id"])
        row = next((r for r in rows if r.topic == "images" and r.leased_by), None)
        held = len(hospital.sop_counts(ct_uid)) if row is not None else 0
        return (row, held) if row is not None and 0 < held < count else None

    row, held = until("the images on their way", in_flight, timeout=60, every=0.01)
    township.kill()
    after = township.outbox(subject=made["id"])
    [images] = [r for r in after if r.topic == "images"]
    assert images.status == "pending" and images.leased_by == row.leased_by  # a dead worker's
    assert len(hospital.sop_counts(ct_uid)) < count, "the drill came too late"

    township.start()  # the same settings and data; the lease runs out and the row goes again
    rows = all_delivered(township, subject=made["id"])
    [images] = [r for r in rows if r.topic == "images"]
    assert images.attempts >= 2 and images.leased_by is None
    assert hospital.sop_counts(ct_uid) == dict.fromkeys(ct_sops, 1)
    assert hospital.tasks_for(made["key"]) == 1
    assert hospital.count_by_identifier("ImagingStudy", "urn:dicom:uid", f"urn:oid:{ct_uid}") == 1
    assert task(township, doctor, made["id"])["status"] == "received"
    imaging_study_id(hospital, hospital.login("specialist.city"), ct_uid, count)
    print(f"killed with {held} of {count} instances at the hospital")


# -- 3. cancelled while waiting, while in flight, and after delivery ------------------------


class OverloadedScp:
    """A DICOM service over TLS on the hospital's DICOM port that takes its time over the
    first C-STORE and then refuses every instance as out of resources (0xA700): the hospital's
    archive on a bad day, while its gateway is down."""

    def __init__(self, port: int, ca: TestCA) -> None:
        self.entered = threading.Event()
        self.stores = 0
        ae = AE(ae_title="CITY_FIRST_GW")
        ae.supported_contexts = AllStoragePresentationContexts
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.ca_cert))
        context.load_cert_chain(str(ca.server_cert), str(ca.server_key))
        context.verify_mode = ssl.CERT_REQUIRED
        server = ae.start_server(
            ("127.0.0.1", port),
            block=False,
            ssl_context=context,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )
        assert server is not None
        self.server = server

    def _store(self, _event: Any) -> int:
        self.stores += 1
        if not self.entered.is_set():
            self.entered.set()
            time.sleep(1.5)
        return 0xA700

    def stop(self) -> None:
        self.server.shutdown()


def test_a_request_cancelled_in_flight(pair, ca, tmp_path: Path) -> None:
    township, hospital = pair
    configure_in_process(township, hospital)
    township.start()  # the hospital is down
    doctor = township.login("doctor.xingfu")
    number = resident_number(township, doctor)
    waiting_uid, _, waiting_files = ct_series(tmp_path / "ct-waiting", 3, number)
    sending_uid, _, sending_files = ct_series(tmp_path / "ct-sending", 2, number)
    ecg, ecg_path = ecg_file(tmp_path / "ecg", number)
    storescu(township, "XINGFU_CT", waiting_files + sending_files)
    storescu(township, "XINGFU_ECG", [ecg_path])
    waiting_study = imaging_study_id(township, doctor, waiting_uid, 3)
    sending_study = imaging_study_id(township, doctor, sending_uid, 2)

    # 1. cancelled while it waits for the hospital: between two attempts, nothing in flight
    waiting = request(township, doctor, kind="imaging", studies=[waiting_study])

    def between_attempts() -> list[Any] | None:
        rows = township.outbox(subject=waiting["id"])
        soon = datetime.now(UTC) + timedelta(seconds=0.4)
        quiet = all(
            r.status == "pending" and r.attempts >= 1 and not r.leased_by and r.next_attempt > soon
            for r in rows
        )
        return rows if len(rows) == 2 and quiet else None

    for row in until("both rows to wait between attempts", between_attempts, timeout=30):
        assert "connect" in (row.last_error or ""), row.last_error
    cancelled = operation(township, doctor, waiting["id"], "cancel", "患者已自行前往市医院")
    assert cancelled["status"] == "cancelled"
    rows = {r.topic: r.status for r in township.outbox(subject=waiting["id"])}
    assert (rows["request"], rows["images"]) == ("cancelled", "cancelled"), rows

    # 2. cancelled while its images are on their way to a DICOM service that then fails them
    scp = OverloadedScp(hospital.dicom_port, ca)
    try:
        sending = request(township, doctor, kind="imaging", studies=[sending_study])

        def images_in_flight() -> Any:
            rows = township.outbox(subject=sending["id"], status="pending")
            row = next((r for r in rows if r.topic == "images" and r.leased_by), None)
            return row if row is not None and scp.entered.is_set() else None

        until("the images in flight", images_in_flight, timeout=30, every=0.02)
        operation(township, doctor, sending["id"], "cancel", "家属要求暂缓")

        def attempt_over() -> bool:
            [images] = [r for r in township.outbox(subject=sending["id"]) if r.topic == "images"]
            return scp.stores >= 2 and not (images.status == "pending" and images.leased_by)

        until("the attempt in flight to end", attempt_over, timeout=30)
    finally:
        scp.stop()

    # 3. the hospital comes up; a request delivered there, then cancelled, is cancelled there
    hospital.start()
    late = request(
        township, doctor, kind="ecg", observations=[ecg_observation_id(township, doctor)],
        priority="stat",
    )  # fmt: skip
    task_in_status(township, doctor, late["id"], "received")
    all_delivered(township, subject=late["id"])  # behind whatever the others left pending
    specialist = hospital.login("specialist.city")
    with hospital.client() as api:
        worklist = api.get("/api/teleconsult/worklist", headers=specialist).json()
    assert [w["key"] for w in worklist] == [late["key"]]
    there = worklist[0]
    operation(township, doctor, late["id"], "cancel", "患者已转诊上级医院")
    done = task_in_status(hospital, specialist, there["id"], "cancelled", timeout=30)
    assert done["statusReason"]["text"] == "患者已转诊上级医院"
    all_delivered(township, subject=late["id"])
    assert hospital.tasks_for(late["key"]) == 1
    assert len(hospital.sop_counts(str(ecg.StudyInstanceUID))) == 1

    # the two cancelled requests: no Task, no ServiceRequest at the hospital ...
    for made in (waiting, sending):
        assert hospital.tasks_for(made["key"]) == 0
        assert hospital.count_by_identifier("ServiceRequest", REQUEST_KEY_SYSTEM, made["key"]) == 0
    # ... and nothing else of theirs either: no image, no message, no dead letter at home
    problems = []
    for made, uid in ((waiting, waiting_uid), (sending, sending_uid)):
        left = [(r.topic, r.status) for r in township.outbox(subject=made["id"])]
        if any(status not in ("cancelled", "dead") for _, status in left):
            problems.append(f"rows of cancelled request {made['key']} went on: {left}")
        held = hospital.sop_counts(uid)
        if held:
            problems.append(f"{len(held)} instances of cancelled request {made['key']} arrived")
    for row in township.outbox(status="dead"):
        problems.append(f"dead letter at the township: {row.topic}: {row.last_error}")
    with hospital.engine.connect() as conn:
        _, archived = inbound.listing(conn, protocol="fhir-msg", limit=100)
    heard = sorted((a.message_type, a.outcome) for a in archived)
    extra = [h for h in heard if h not in (("cancel", "accepted"), ("request", "accepted"))]
    if extra:
        problems.append(f"the hospital heard more than the late request: {heard}")
    assert len(heard) - len(extra) == 2, heard  # the late request and its cancellation
    assert not problems, problems
