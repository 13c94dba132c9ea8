"""What accepting an association and reading a header cost the gateway: pynetdicom's copy of the
presentation contexts, pydicom's UID check, and pydicom's reading validation (dicom/__init__.py,
dicom/scp.py)."""

from __future__ import annotations

import copy
import gc
import logging
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, generate_uid
from pynetdicom import transport

from dicom import _uid_is_valid
from dicom.ingest import Origin
from dicom.scp import DicomServer, ScpSettings, _copy_contexts
from gateway.context import Context
from tests.dicom.test_scp import sample


def _server(demo: Context) -> DicomServer:
    return DicomServer(demo.dicom, ScpSettings(port=0), known_ae_titles=lambda: ["XINGFU_CT"])


def test_each_association_gets_contexts_equal_to_a_deep_copy_and_its_own(demo: Context) -> None:
    contexts = _server(demo).build_ae().supported_contexts
    deep, ours = copy.deepcopy(contexts), _copy_contexts(contexts)
    assert [vars(c) for c in ours] == [vars(c) for c in deep]
    assert all(a is not b for a, b in zip(ours, contexts, strict=True))
    ours[0].transfer_syntax.append(UID("1.2.3.4"))  # negotiation's changes stay in the copy
    ours[0].scp_role = True
    assert UID("1.2.3.4") not in contexts[0].transfer_syntax and contexts[0].scp_role is None


def test_a_started_server_copies_contexts_cheaply(demo: Context) -> None:
    server = _server(demo)
    server.start()
    try:
        assert transport.deepcopy is _copy_contexts
    finally:
        server.stop()
    assert _copy_contexts({"not": "contexts"}) == {"not": "contexts"}  # anything else: deep


@pytest.mark.parametrize(
    "value", ["1.2.840.10008.1.2.1", "1.2.03", "1.2.", "1.a.3", "1" * 65, "1" * 64, "0", ""]
)
def test_the_remembered_uid_check_answers_as_pydicoms(value: str) -> None:
    expected = len(value) <= 64 and bool(pydicom.uid.re.match(pydicom.uid.RE_VALID_UID, value))
    assert _uid_is_valid(value) is expected
    assert UID(value).is_valid is expected


def test_a_value_pydicom_finds_non_conforming_never_reaches_the_log(
    demo: Context, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientBirthDate = "1985-03-12"  # not a DA value: pydicom would log it, value and all
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    origin = Origin("dicom", "XINGFU_CT", "127.0.0.1:1", "XINGFU-THC")
    with warnings.catch_warnings(record=True) as warned, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        outcome = demo.dicom.file(tmp_path / "ct.dcm", origin)
    assert outcome.ok, outcome
    assert not [w for w in warned if "1985" in str(w.message)]
    assert "1985" not in caplog.text


def test_the_accept_loop_forces_no_garbage_collection(
    demo: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's server ran a full gc.collect() every 60 turns of its loop (60-80 ms with
    the interpreter's lock held, every ingest stalled)."""
    collected: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *args: collected.append(1) or 0)
    server = _server(demo)
    server.start()
    try:
        for _ in range(200):  # the turns of 200 associations, or 100 s idle
            server._server.service_actions()
    finally:
        server.stop()
    assert collected == []
