"""Sending stored objects by C-STORE (``dicom.send``) to peers we did not write: Orthanc as a
hospital PACS over DICOM TLS with a required client certificate, dcmtk's storescp, and another
Yilian's SCP. The bytes that arrive must be the bytes stored, and each way of failing must say
whether a retry can help."""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, StoragePresentationContexts, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from dicom import commands
from dicom.commands import COMMAND, DATASET
from dicom.scp import DicomServer, ScpSettings
from dicom.send import (
    MAX_ASSOCIATIONS,
    MAX_CONTEXTS,
    MAX_PDU_SENT,
    Destination,
    SendError,
    _batches,
    _File,
    _pdus,
    default_associations,
    send,
)
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
@pytest.mark.parametrize("associations", [1, 3])
def test_files_reach_orthanc_over_tls_byte_for_byte(
    tls_pacs: Orthanc, ca: TestCA, associations: int
) -> None:
    files = samples()
    renewed: list[str] = []
    destination = to(tls_pacs, ca.client_context("XINGFU_THC"))
    report = send(files, destination, progress=renewed.append, associations=associations)

    uids = [uid_of(p) for p in files]
    assert report.sent == uids and report.failed == []  # in the order of the paths
    assert sorted(renewed) == sorted(uids)  # the caller's lease is renewed after each one
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
def test_a_refused_client_certificate_is_permanent_over_several_associations(
    tls_pacs: Orthanc, ca: TestCA, foreign_ca: TestCA, tmp_path: Path
) -> None:
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 12)
    context = client_context(ca, foreign_ca, "XINGFU_THC")
    for _ in range(3):  # the TLS alert can come late (TLS 1.3): never taken as transient
        with pytest.raises(SendError) as caught:
            send(files, to(tls_pacs, context), associations=4)
        assert caught.value.permanent, caught.value.reason
        assert "refused our client certificate" in caught.value.reason
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


@contextmanager
def _rejecting_at_once() -> Iterator[int]:
    """A peer that reads each association request, rejects it and closes the connection at
    once, as Orthanc does; the port it listens on."""
    server = socket.create_server(("127.0.0.1", 0))
    rejection = struct.pack(">BBLBBBB", 0x03, 0, 4, 0, 0x01, 0x01, 0x07)  # called AE unknown

    def serve() -> None:
        with suppress(OSError):  # the server socket closed: the test is over
            while True:
                peer, _ = server.accept()
                with peer:
                    length = struct.unpack(">BBL", peer.recv(6, socket.MSG_WAITALL))[2]
                    peer.recv(length, socket.MSG_WAITALL)
                    peer.sendall(rejection)

    threading.Thread(target=serve, daemon=True).start()
    with server:
        yield server.getsockname()[1]


def test_a_rejection_followed_at_once_by_the_close_is_still_a_rejection() -> None:
    # The requesting thread can find the connection already closed when it looks for the
    # answer; pynetdicom then reports a failure to connect (about 1 request in 50 here).
    with _rejecting_at_once() as port:
        for _ in range(300):
            with pytest.raises(SendError) as caught:
                send(samples(), Destination("127.0.0.1", port, "NOT_ORTHANC"))
            assert caught.value.permanent, caught.value.reason
            assert "Called AE title not recognised" in caught.value.reason


@pytest.mark.parametrize(("tls", "associations"), [(False, 1), (True, 1), (True, 3)])
def test_nothing_listening_is_a_transient_error(ca: TestCA, tls: bool, associations: int) -> None:
    context = ca.client_context("XINGFU_THC") if tls else None
    destination = Destination("127.0.0.1", free_port(), "NOBODY", tls=context)
    with pytest.raises(SendError) as caught:
        send(samples(), destination, timeout=5, associations=associations)
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

    def files(self) -> list[Path]:
        return [p for p in self.folder.iterdir() if p.is_file()]

    def log(self) -> str:
        return (self.folder.parent / f"{self.folder.name}.log").read_text(errors="replace")

    def children(self) -> list[int]:
        """With --fork: the processes serving an association now (not those that ended, which
        storescp reaps only when the next association comes)."""
        pid = self.process.pid
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in found if _running(int(c))]


def _running(pid: int) -> bool:
    try:  # /proc/PID/stat: "pid (comm) state ...", state Z for a process that ended
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


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


# -- several associations at once ------------------------------------------------------------


def test_default_associations_open_more_for_a_study_only() -> None:
    assert [default_associations(n) for n in (0, 1, 3, 8)] == [1, 1, 1, 1]
    assert [default_associations(n) for n in (9, 16, 17)] == [2, 2, 3]
    assert default_associations(10_000) == MAX_ASSOCIATIONS


def test_zero_associations_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        send(samples(), Destination("127.0.0.1", free_port(), "NOBODY"), associations=0)


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.slow
def test_several_associations_deliver_each_instance_exactly_once(tmp_path: Path) -> None:
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 120)
    uids = [uid_of(p) for p in files]
    stored: list[str] = []
    inside = threading.Lock()

    def progress(uid: str) -> None:  # fails the send if two threads ever call it at once
        assert inside.acquire(blocking=False), "progress called from two threads at once"
        try:
            time.sleep(0.001)
            stored.append(uid)
        finally:
            inside.release()

    # --fork: an association per process, served at once; +uf: a second copy of an instance
    # would be a second file
    with storescp(tmp_path, "--fork", "+uf", "+B", "-v") as scp:
        before = scp.log().count("Association Received")
        report = send(files, at(scp), associations=3, progress=progress)
        _wait_for(lambda: scp.children() == [], "the associations to end")
        opened = scp.log().count("Association Received") - before
        received = scp.files()
    # each opened once the one before is: the last one could find the files all taken
    assert opened in (2, 3)
    assert report.sent == uids and report.failed == []  # in the order of the paths
    assert sorted(stored) == sorted(uids)
    assert sorted(uid_of(p) for p in received) == sorted(uids)  # each one once
    by_uid = {uid_of(p): p for p in received}
    assert all(dataset_bytes(by_uid[uid_of(p)]) == dataset_bytes(p) for p in files)


@pytest.mark.slow
def test_an_instance_the_peer_refuses_is_reported_over_several_associations(
    tmp_path: Path,
) -> None:
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 20)
    jpeg = sample("SC_rgb_jpeg_dcmtk.dcm")
    files.insert(7, jpeg)
    with storescp(tmp_path, "--fork") as scp:  # uncompressed syntaxes only
        report = send(files, at(scp), associations=3)
        _wait_for(lambda: len(scp.files()) == 20, "storescp to write 20 files")
        received = scp.received()
    assert [(uid, status) for uid, status, _ in report.failed] == [(uid_of(jpeg), 0x0122)]
    assert report.sent == [uid_of(p) for p in files if p != jpeg]
    assert sorted(received) == sorted(report.sent)


@pytest.mark.slow
def test_an_association_lost_mid_way_stops_the_others_and_is_a_transient_error(
    tmp_path: Path,
) -> None:
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 200)
    stored: list[str] = []
    with storescp(tmp_path, "--fork", "+uf") as scp:

        def one_peer_process_dies(uid: str) -> None:
            stored.append(uid)
            if len(stored) == 10:
                os.kill(scp.children()[0], signal.SIGKILL)  # one association's end

        with pytest.raises(SendError) as caught:
            send(files, at(scp), timeout=30, associations=3, progress=one_peer_process_dies)
        _wait_for(lambda: scp.children() == [], "the other associations to end")
        received = scp.files()
    assert not caught.value.permanent and "lost" in caught.value.reason
    assert len(stored) < len(files) and len(received) < len(files)


@pytest.mark.slow
def test_an_error_from_progress_stops_every_association_and_is_raised(tmp_path: Path) -> None:
    class LeaseLost(Exception):
        pass

    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 200)
    stored: list[str] = []

    def progress(uid: str) -> None:
        stored.append(uid)
        if len(stored) == 5:
            raise LeaseLost

    with storescp(tmp_path, "--fork", "+uf") as scp:
        with pytest.raises(LeaseLost):
            send(files, at(scp), associations=3, progress=progress)
        _wait_for(lambda: scp.children() == [], "the associations to end")
        received = scp.files()
    assert len(stored) == 5  # not called again once the send failed
    assert len(received) < 5 + 3 * 2  # what was in flight, at most


@pytest.mark.slow
def test_a_peer_that_takes_one_association_at_a_time_gets_every_file_over_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pynetdicom's own SCP with ``maximum_associations = 1``, as a PACS that limits callers:
    the extra associations are rejected (transient), and the one it took carries the files."""
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        time.sleep(0.02)  # so the first association is still busy when the next one is asked
        return 0x0000

    ae = AE(ae_title="ONE_AT_A_TIME")
    ae.supported_contexts = StoragePresentationContexts
    ae.maximum_associations = 1
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    try:
        port = server.server_address[1]
        files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 30)
        with caplog.at_level(logging.WARNING, logger="dicom.send"):
            report = send(files, Destination("127.0.0.1", port, "ONE_AT_A_TIME"), associations=3)
    finally:
        server.shutdown()
    assert report.sent == [uid_of(p) for p in files] and report.failed == []
    assert sorted(received) == sorted(report.sent)  # each one once
    assert any("could not be opened" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_peer_that_serves_one_association_after_the_other_gets_every_file_once(
    tmp_path: Path,
) -> None:
    """storescp without --fork leaves the extra association requests in its listen queue until
    the first association ends."""
    files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 30)
    with storescp(tmp_path, "+uf") as scp:
        report = send(files, at(scp), associations=3)
        received = scp.files()
    assert report.sent == [uid_of(p) for p in files] and report.failed == []
    assert sorted(uid_of(p) for p in received) == sorted(report.sent)


# -- what goes on the wire -------------------------------------------------------------------


@pytest.mark.parametrize("uid", ["1.2.3.4", "1.2.3.45"])  # odd and even lengths (UI padding)
def test_the_c_store_command_is_the_one_pynetdicom_encodes(uid: str) -> None:
    request = C_STORE()
    request.MessageID, request.Priority = 65535, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", uid
    request.DataSet = BytesIO(b"\x00\x00")  # a dataset follows (Command Data Set Type)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    ours = commands.c_store_rq("1.2.840.10008.5.1.4.1.1.2", uid, 65535, 2)
    assert ours == encode(message.command_set, True, True)


@pytest.mark.parametrize("pdu_length", [16384, 1000, 64])
@pytest.mark.parametrize("dataset_length", [0, 1, 30000])
def test_the_pdus_are_the_ones_pynetdicom_makes(
    tmp_path: Path, pdu_length: int, dataset_length: int
) -> None:
    dataset = os.urandom(dataset_length)
    (tmp_path / "dataset").write_bytes(dataset)
    request = C_STORE()
    request.MessageID, request.Priority = 9, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2"
    request._dataset_path = (tmp_path / "dataset", 0)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    theirs = b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(5, pdu_length))

    command = commands.c_store_rq("1.2.840.10008.5.1.4.1.1.2", "1.2", 9, 2)
    size = pdu_length - 6
    pdus = _pdus(command, size, 5, COMMAND, last=True)
    pdus += _pdus(dataset[:size], size, 5, DATASET, last=len(dataset) <= size)  # as read:
    pdus += _pdus(dataset[size:], size, 5, DATASET, last=True) if len(dataset) > size else []
    assert b"".join(pdus) == theirs


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
    report = send(files, destination, associations=2)
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
