"""DICOM over TLS with client certificates: a certificate must name the organization that owns
the calling device, or the caller acts for nobody (nothing filed, nothing found)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from dicom import quarantine
from dicom.qr import QueryRetrieve
from dicom.scp import DicomServer, ScpSettings
from gateway.context import Context
from gateway.listeners import organization_of_certificate
from security.tls import server_context
from tests.dicom.test_scp import copy_with_new_uids, instances, sample
from tests.tls import TestCA, make_ca

pytestmark = pytest.mark.slow


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    folder = tmp_path / "ca"
    folder.mkdir()
    return make_ca(folder, ["XINGFU_THC", "CITY_FIRST"])


@pytest.fixture
def tls_scp(demo: Context, ca: TestCA) -> Iterator[DicomServer]:
    owner = partial(organization_of_certificate, demo)  # the gateway's own mapping
    qr = QueryRetrieve(demo.dicom, owner)
    server = DicomServer(
        demo.dicom,
        ScpSettings(port=0),
        ssl_context=server_context(str(ca.server_cert), str(ca.server_key), str(ca.ca_cert)),
        known_ae_titles=demo.dicom.known_ae_titles,
        organization_of_certificate=owner,
        extra_handlers=qr.handlers(),
        configure=qr.configure,
    )
    server.start()
    yield server
    server.stop()


def _associate(port: int, ca: TestCA, certificate: str):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="XINGFU_CT")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="YILIAN", tls_args=(ca.client_context(certificate), "localhost")
    )
    assert assoc.is_established
    return assoc


def _store_and_find(port: int, ca: TestCA, certificate: str, path: Path) -> tuple[int, int]:
    assoc = _associate(port, ca, certificate)
    try:
        status = assoc.send_c_store(pydicom.dcmread(path))
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        found = [
            answer
            for status_, answer in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            )
            if status_ and status_.Status == 0xFF00
        ]
    finally:
        assoc.release()
    return status.Status, len(found)


def test_the_clinics_certificate_stores_and_finds(
    tls_scp: DicomServer, demo: Context, ca: TestCA, tmp_path: Path
) -> None:
    [ct] = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 1)
    assert _store_and_find(tls_scp.port, ca, "XINGFU_THC", ct) == (0x0000, 1)
    assert len(instances(demo)) == 1


def test_another_organizations_certificate_acts_for_nobody(
    tls_scp: DicomServer, demo: Context, ca: TestCA, tmp_path: Path
) -> None:
    [ct] = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 1)
    assert _store_and_find(tls_scp.port, ca, "XINGFU_THC", ct) == (0x0000, 1)
    [other] = (
        copy_with_new_uids(sample("CT_small.dcm"), tmp_path / "other", 1)
        if (tmp_path / "other").mkdir() is None
        else []
    )
    # the city hospital's certificate, calling with the township CT's AE title
    status, found = _store_and_find(tls_scp.port, ca, "CITY_FIRST", other)
    assert status == 0x0124
    assert found == 0
    assert len(instances(demo)) == 1
    [entry] = quarantine.entries(demo.engine)
    assert "certificate" in entry.reason
