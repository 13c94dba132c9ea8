"""Fixtures of the DICOM tests: an index filled by the real ingest with pydicom's sample objects
(CT, MR, a 12-lead ECG, UTF-8 and GB18030 names) and an ISO 2022 IR 58 object built byte by byte."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import uvicorn
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

from dicom.ingest import Origin
from dicom.qr import QueryRetrieve
from dicom.scp import DicomServer, ScpSettings
from gateway.app import create_app
from gateway.context import Context
from gateway.settings import Settings
from records import users
from tests.conftest import bearer
from tests.dicom.test_charsets import CHARSET_FILES, ESC_GB2312, element, gb
from tests.dicom.test_scp import copy_with_new_uids, sample

IR58_STUDY = "1.2.826.0.1.3680043.8.498.58"


def ir58_file(folder: Path) -> Path:
    """A secondary capture whose name is in ISO 2022 IR 58, as raw bytes (pydicom cannot write
    that encoding itself)."""
    elements = [
        element(0x00080005, "CS", b"\\ISO 2022 IR 58"),
        element(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\x00"),
        element(0x00080018, "UI", f"{IR58_STUDY}.3".encode()),
        element(0x00080020, "DA", b"20240105"),
        element(0x00080060, "CS", b"OT"),
        element(
            0x00100010,
            "PN",
            b"Wang^XiaoDong=" + ESC_GB2312 + gb("王") + b"^" + ESC_GB2312 + gb("小东") + b"=",
        ),
        element(0x00100020, "LO", b"IR58EXAMPLE"),
        element(0x0020000D, "UI", f"{IR58_STUDY}.1".encode()),
        element(0x0020000E, "UI", f"{IR58_STUDY}.2".encode()),
    ]
    meta = pydicom.Dataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = f"{IR58_STUDY}.3"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(pydicom.filebase.DicomFileLike(buffer), pydicom.FileMetaDataset(meta))
    path = folder / "ir58.dcm"
    path.write_bytes(buffer.getvalue() + b"".join(elements))
    return path


@pytest.fixture
def filed(demo: Context, tmp_path: Path) -> Context:
    org = demo.dicom.organization_of_ae("XINGFU_CT")
    origin = Origin("dicom", "XINGFU_CT", "127.0.0.1:1", org)
    charsets = Path(CHARSET_FILES)
    sources = [
        sample("CT_small.dcm"),
        sample("MR_small.dcm"),
        sample("waveform_ecg.dcm"),
        charsets / "chrX1.dcm",
        charsets / "chrX2.dcm",
    ]
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [Path(shutil.copy(s, folder / f"{n}.dcm")) for n, s in enumerate(sources)]
    paths.append(ir58_file(folder))
    series = tmp_path / "series"
    series.mkdir()
    paths += copy_with_new_uids(
        sample("CT_small.dcm"), series, 3, StudyDate="20240301", AccessionNumber="XF2024"
    )
    for path in paths:
        outcome = demo.dicom.file(path, origin)
        assert outcome.ok, outcome.reason
    return demo


@dataclass
class LiveGateway:
    """The gateway as ``yilian serve`` runs it (HTTP on a real socket, the DICOM SCP)."""

    base: str  # http://127.0.0.1:PORT
    dicom_port: int

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicomweb"


@pytest.fixture
def live_gateway(demo: Context, settings: Settings) -> Iterator[LiveGateway]:
    app = create_app(settings.model_copy(update={"dicom_enabled": True, "dicom_port": 0}), demo)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield LiveGateway(f"http://127.0.0.1:{port}", app.state.dicom.port)
    server.should_exit = True
    thread.join(15)


@pytest.fixture
def token(demo: Context) -> str:
    """A bearer token of the demo's township doctor."""
    with demo.engine.begin() as conn:
        user = users.get(conn, "doctor.xingfu")
    assert user is not None
    return bearer(demo, user.principal())["Authorization"].split(" ", 1)[1]


@contextmanager
def query_retrieve_scp(ctx: Context) -> Iterator[DicomServer]:
    """The gateway's SCP as ``yilian serve`` runs it (storage, verification, query/retrieve),
    on a free port."""
    qr = QueryRetrieve(ctx.dicom)
    server = DicomServer(
        ctx.dicom,
        ScpSettings(port=0),
        known_ae_titles=ctx.dicom.known_ae_titles,
        extra_handlers=qr.handlers(),
        configure=qr.configure,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
