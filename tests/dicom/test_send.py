"""Sending stored objects by C-STORE (``dicom.send``) to peers we did not write: Orthanc as a
hospital PACS over DICOM TLS with a required client certificate, dcmtk's storescp, and another
Yilian's SCP. The bytes that arrive must be the bytes stored, and each way of failing must say
whether a retry can help."""

from __future__ import annotations

import os
import ssl
import struct
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AllStoragePresentationContexts, evt

from dicom.scp import DicomServer, ScpSettings
from dicom.send import MAX_CONTEXTS, MAX_PDU_SENT, Destination, SendError, _batches, _File, send
from gateway.context import Context
from security.tls import server_context
from tests.dicom.orthanc import DicomTls, Orthanc, free_port, running_orthanc
from tests.dicom.peers import DCMTK, dcmtk
from tests.dicom.test_scp import copy_with_new_uids, dataset_bytes, instances, sample
from tests.tls import TestCA, make_ca

SAMPLES = ["CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "waveform_ecg.dcm"]  # CT, JPEG, 12-lead ECG


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    folder = tmp_path / "ca"
    folder.mkdir()
    return make_ca(folder, ["XINGFU_THC"], expired_clients=["LAPSED"])


@pytest.fixture
def foreign_ca(tmp_path: Path) -> TestCA:
    folder = tmp_path / "foreign-ca"
    folder.mkdir()
    return make_ca(folder, ["XINGFU_THC"])


@pytest.fixture
def tls_pacs(tmp_path: Path, ca: TestCA) -> Iterator[Orthanc]:
    """Orthanc with DICOM TLS that wants a client certificate signed by ``ca``."""
    tls = DicomTls(ca.server_cert, ca.server_key, ca.ca_cert, client_certificate_required=True)
    with running_orthanc(tmp_path, dicom_tls=tls) as pacs:
        yield pacs


def to(pacs: Orthanc, context: ssl.SSLContext | None, **options: Any) -> Destination:
    return Destination("127.0.0.1", pacs.dicom_port, pacs.aet, tls=context, **options)


def client_context(ca: TestCA, certificate_from: TestCA, name: str) -> ssl.SSLContext:
    """Trusts ``ca`` (the PACS's), presents ``name``'s certificate from ``certificate_from``."""
    context = ssl.create_default_context(cafile=str(ca.ca_cert))
    context.load_cert_chain(*map(str, certificate_from.client_files(name)))
    return context


def samples() -> list[Path]:
    return [sample(name) for name in SAMPLES]


def uid_of(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def held_by(pacs: Orthanc, uid: str) -> bytes:
    [found] = [r for r in pacs.lookup(uid) if r["Type"] == "Instance"]
    return bytes(pacs.get(f"/instances/{found['ID']}/file"))


def after_meta(data: bytes) -> bytes:
    """The dataset of a DICOM file, what a C-STORE carries: each end writes its own meta."""
    assert data[128:132] == b"DICM"
    group_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL, explicit VR LE
    return data[144 + group_length :]


def syntax_of(data: bytes) -> str:
    return str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)


# -- Orthanc over DICOM TLS ------------------------------------------------------------------


@pytest.mark.slow
def test_files_reach_orthanc_over_tls_byte_for_byte(tls_pacs: Orthanc, ca: TestCA) -> None:
    files = samples()
    renewed: list[str] = []
    report = send(files, to(tls_pacs, ca.client_context("XINGFU_THC")), progress=renewed.append)

    uids = [uid_of(p) for p in files]
    assert report.sent == uids and report.failed == []
    assert renewed == uids  # the caller's lease is renewed after each stored instance
    assert tls_pacs.instances() == sorted(uids)
    for path, uid in zip(files, uids, strict=True):
        held = held_by(tls_pacs, uid)
        assert syntax_of(held) == syntax_of(path.read_bytes())
        if path.name == "waveform_ecg.dcm":
            # Orthanc (DCMTK) writes this file's undefined-length sequences with explicit lengths
            # when it stores it: same content, other bytes (storescp +B below keeps them as sent)
            assert pydicom.dcmread(BytesIO(held)) == pydicom.dcmread(path)
        else:
            assert after_meta(held) == dataset_bytes(path), f"{path.name} changed on the way"


@pytest.mark.slow
def test_sending_the_same_files_again_leaves_one_copy_each(tls_pacs: Orthanc, ca: TestCA) -> None:
    destination = to(tls_pacs, ca.client_context("XINGFU_THC"))
    first = send(samples(), destination)
    again = send(samples(), destination)  # a retried delivery
    assert again.sent == first.sent and again.failed == []
    assert len(tls_pacs.get("/instances")) == len(SAMPLES)
    assert tls_pacs.instances() == sorted(first.sent)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("certificate", "words"),
    [
        ("foreign", "refused our client certificate"),  # signed by a CA Orthanc does not trust
        ("expired", "refused our client certificate: it has expired"),
    ],
)
def test_a_client_certificate_orthanc_refuses_is_a_permanent_tls_error(
    tls_pacs: Orthanc, ca: TestCA, foreign_ca: TestCA, certificate: str, words: str
) -> None:
    if certificate == "foreign":
        context = client_context(ca, foreign_ca, "XINGFU_THC")
    else:
        context = ca.client_context("LAPSED")
    with pytest.raises(SendError) as caught:
        send(samples(), to(tls_pacs, context))
    assert caught.value.permanent
    assert caught.value.reason.startswith("TLS: ") and words in caught.value.reason
    assert tls_pacs.instances() == []


@pytest.mark.slow
def test_a_pacs_certificate_we_do_not_trust_is_a_permanent_tls_error(
    tls_pacs: Orthanc, ca: TestCA, foreign_ca: TestCA
) -> None:
    context = client_context(foreign_ca, ca, "XINGFU_THC")  # trusts the wrong CA
    with pytest.raises(SendError) as caught:
        send(samples(), to(tls_pacs, context))
    assert caught.value.permanent and "failed verification" in caught.value.reason

    wrong_name = to(tls_pacs, ca.client_context("XINGFU_THC"), server_hostname="pacs.example")
    with pytest.raises(SendError) as caught:
        send(samples(), wrong_name)
    assert caught.value.permanent and "pacs.example" in caught.value.reason


@pytest.mark.slow
def test_plain_dicom_to_a_tls_only_pacs_fails(tls_pacs: Orthanc) -> None:
    with pytest.raises(SendError) as caught:
        send(samples(), to(tls_pacs, None), timeout=5)
    assert "does it expect TLS?" in caught.value.reason
    assert not caught.value.permanent  # to us, like a peer that went away mid-association
    assert tls_pacs.instances() == []


# -- associations refused --------------------------------------------------------------------


class _CalledAeChecking(Orthanc):
    def config(self) -> dict[str, Any]:
        return {**super().config(), "DicomCheckCalledAet": True}


@pytest.mark.slow
def test_an_unknown_called_ae_title_is_a_permanent_rejection(tmp_path: Path) -> None:
    with _CalledAeChecking(Path(tempfile.mkdtemp(dir=tmp_path))) as pacs:
        with pytest.raises(SendError) as caught:
            send(samples(), Destination("127.0.0.1", pacs.dicom_port, "NOT_ORTHANC"))
        assert pacs.instances() == []
    assert caught.value.permanent
    assert "rejected the association" in caught.value.reason
    assert "Called AE title not recognised" in caught.value.reason


@pytest.mark.parametrize("tls", [False, True])
def test_nothing_listening_is_a_transient_error(ca: TestCA, tls: bool) -> None:
    context = ca.client_context("XINGFU_THC") if tls else None
    destination = Destination("127.0.0.1", free_port(), "NOBODY", tls=context)
    with pytest.raises(SendError) as caught:
        send(samples(), destination, timeout=5)
    assert not caught.value.permanent and "could not connect" in caught.value.reason


def test_nothing_to_send_opens_no_association() -> None:
    report = send([], Destination("127.0.0.1", free_port(), "NOBODY"))
    assert report.sent == [] and report.failed == []


def test_a_file_without_file_meta_information_is_refused_before_connecting(
    tmp_path: Path,
) -> None:
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(dataset_bytes(sample("CT_small.dcm")))
    with pytest.raises(ValueError, match="file meta"):
        send([bare], Destination("127.0.0.1", free_port(), "NOBODY"))


# -- dcmtk's storescp (plain DICOM) ----------------------------------------------------------


@dataclass
class StoreScp:
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> the file storescp wrote."""
        return {uid_of(p): p for p in self.folder.iterdir() if p.is_file()}


@contextmanager
def storescp(tmp_path: Path, *options: str) -> Iterator[StoreScp]:
    """dcmtk's storescp writing what it receives into a new folder."""
    folder = Path(tempfile.mkdtemp(prefix="storescp-", dir=tmp_path))
    port, program = free_port(), DCMTK / "storescp"
    assert program.exists(), "dcmtk's storescp is not installed (apt-get install dcmtk)"
    with (folder.parent / f"{folder.name}.log").open("wb") as log:
        process = subprocess.Popen(
            [str(program), "-od", str(folder), *options, str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
    try:
        deadline = time.monotonic() + 10
        while dcmtk("echoscu", "127.0.0.1", str(port), timeout=5).returncode != 0:
            assert process.poll() is None and time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.05)
        yield StoreScp(port, folder, process)
    finally:
        process.kill()
        process.wait(timeout=10)


def at(scp: StoreScp) -> Destination:
    return Destination("127.0.0.1", scp.port, "STORESCP")


@pytest.mark.slow
def test_plain_dicom_to_storescp_arrives_byte_for_byte(tmp_path: Path) -> None:
    with storescp(tmp_path, "+xa", "+B") as scp:  # every syntax; +B: writes what it got
        report = send(samples(), at(scp))
        received = scp.received()
    assert report.failed == [] and sorted(report.sent) == sorted(received)
    for path in samples():
        assert dataset_bytes(received[uid_of(path)]) == dataset_bytes(path)


@pytest.mark.slow
def test_a_syntax_the_peer_does_not_take_fails_that_instance_only(tmp_path: Path) -> None:
    with storescp(tmp_path) as scp:  # by default storescp takes uncompressed syntaxes only
        report = send(samples(), at(scp))
        received = scp.received()
    jpeg = uid_of(sample("SC_rgb_jpeg_dcmtk.dcm"))
    assert [(uid, status) for uid, status, _ in report.failed] == [(jpeg, 0x0122)]
    assert "no presentation context" in report.failed[0][2]
    assert sorted(report.sent) == sorted(received) and jpeg not in received


@pytest.mark.slow
def test_an_uncompressed_file_is_converted_when_the_peer_takes_only_the_other_syntax(
    tmp_path: Path,
) -> None:
    ct = sample("CT_small.dcm")  # explicit VR little endian
    with storescp(tmp_path, "+xi") as scp:  # +xi: implicit VR little endian only
        report = send([ct], at(scp))
        [stored] = scp.received().values()
    assert report.sent == [uid_of(ct)]
    arrived = pydicom.dcmread(stored)
    assert arrived.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert arrived.PixelData == pydicom.dcmread(ct).PixelData


@pytest.mark.slow
def test_a_large_instance_is_streamed_from_its_file(tmp_path: Path) -> None:
    big = _large_ct(tmp_path / "big.dcm", megabytes=64)
    with storescp(tmp_path, "+B", "--max-pdu", "131072") as scp:
        tracemalloc.start()
        try:
            report = send([big], at(scp), timeout=60)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        [stored] = scp.received().values()
    assert report.sent == [uid_of(big)]
    assert peak < 24 * 1024 * 1024, f"{peak / 2**20:.0f} MiB held to send a 64 MiB instance"
    assert dataset_bytes(stored) == dataset_bytes(big)


def _large_ct(path: Path, megabytes: int) -> Path:
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.Rows, ds.Columns = 4096, megabytes * 128  # 16-bit pixels
    ds.PixelData = os.urandom(megabytes * 1024 * 1024)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.slow
def test_a_peer_lost_mid_way_is_a_transient_error_after_the_instances_it_took(
    tmp_path: Path,
) -> None:
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 3)
    with storescp(tmp_path) as scp:
        renewed: list[str] = []

        def peer_dies(uid: str) -> None:  # after the first instance
            renewed.append(uid)
            scp.process.kill()
            scp.process.wait()

        with pytest.raises(SendError) as caught:
            send(files, at(scp), timeout=5, progress=peer_dies)
    assert not caught.value.permanent and "lost" in caught.value.reason
    assert renewed == [uid_of(files[0])]


# -- many SOP classes ------------------------------------------------------------------------


def test_files_needing_more_than_128_contexts_are_split_in_order() -> None:
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts][:70]
    files = [
        _File(Path(f"{n}.dcm"), c, f"1.2.{n}", "1.2.840.10008.1.2.1") for n, c in enumerate(classes)
    ]
    batches = list(_batches(files))
    assert [len(b) for b in batches] == [64, 6]  # two contexts each (explicit and implicit)
    assert [f for b in batches for f in b] == files
    assert all(len({cx for f in b for cx in f.contexts()}) <= MAX_CONTEXTS for b in batches)


@pytest.mark.slow
def test_files_of_many_sop_classes_all_reach_orthanc(tmp_path: Path) -> None:
    """140 contexts: two associations (pynetdicom refuses to propose more than 128)."""
    classes = [UID(str(cx.abstract_syntax)) for cx in AllStoragePresentationContexts][:70]
    files = []
    for n, sop_class in enumerate(classes):
        ds = pydicom.dcmread(sample("CT_small.dcm"))
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files.append(tmp_path / f"{n}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    with running_orthanc(tmp_path) as pacs:
        report = send(files, Destination("127.0.0.1", pacs.dicom_port, pacs.aet))
        held = pacs.instances()
    assert report.failed == [] and sorted(report.sent) == held and len(held) == 70


# -- another Yilian's SCP --------------------------------------------------------------------


@pytest.fixture
def yilian_scp(demo: Context, ca: TestCA) -> Iterator[tuple[DicomServer, list[int]]]:
    """The gateway's own SCP over TLS, noting the size of each P-DATA PDU it receives."""
    sizes: list[int] = []

    def on_pdu(event: Any) -> None:
        if type(event.pdu).__name__ == "P_DATA_TF":
            sizes.append(len(event.pdu))

    server = DicomServer(
        demo.dicom,
        ScpSettings(port=0),  # it accepts PDUs of any length (maximum 0)
        ssl_context=server_context(str(ca.server_cert), str(ca.server_key), str(ca.ca_cert)),
        known_ae_titles=demo.dicom.known_ae_titles,
        extra_handlers=[(evt.EVT_PDU_RECV, on_pdu)],
    )
    server.start()
    yield server, sizes
    server.stop()


@pytest.mark.slow
def test_another_yilian_files_what_it_receives_and_refuses_a_broken_instance(
    yilian_scp: tuple[DicomServer, list[int]], demo: Context, ca: TestCA, tmp_path: Path
) -> None:
    server, pdu_sizes = yilian_scp
    big = _large_ct(tmp_path / "big.dcm", megabytes=4)
    no_study = pydicom.dcmread(sample("MR_small.dcm"))
    del no_study.StudyInstanceUID
    no_study.save_as(tmp_path / "no-study.dcm")
    files = [sample("CT_small.dcm"), big, tmp_path / "no-study.dcm"]
    destination = Destination(
        "127.0.0.1",
        server.port,
        "YILIAN",
        calling_ae="XINGFU_CT",
        tls=ca.client_context("XINGFU_THC"),
        server_hostname="localhost",
    )
    report = send(files, destination)
    assert report.sent == [uid_of(files[0]), uid_of(big)]
    [(uid, status, reason)] = report.failed
    assert uid == no_study.SOPInstanceUID and status == 0xA900 and "StudyInstanceUID" in reason
    assert len(instances(demo)) == 2
    assert max(pdu_sizes) <= MAX_PDU_SENT + 6  # not the whole 4 MiB dataset in one PDU


@pytest.mark.slow
def test_a_calling_ae_title_another_yilian_does_not_know_is_a_permanent_rejection(
    yilian_scp: tuple[DicomServer, list[int]], ca: TestCA
) -> None:
    server, _ = yilian_scp
    destination = Destination(
        "127.0.0.1",
        server.port,
        "YILIAN",
        calling_ae="STRANGER",
        tls=ca.client_context("XINGFU_THC"),
        server_hostname="localhost",
    )
    with pytest.raises(SendError) as caught:
        send(samples(), destination)
    assert caught.value.permanent and "Calling AE title not recognised" in caught.value.reason
