"""dicom.refresh: an ImagingStudy brought up to date once a burst of associations is over."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicom.ingest import Origin
from dicom.refresh import StudyRefresher
from dicom.scp import DicomServer, ScpSettings
from gateway.context import Context
from records import schema
from tests.dicom.test_scp import copy_with_new_uids, find_one, sample, storescu

ORIGIN = Origin("dicom", "XINGFU_CT", "127.0.0.1:1", "XINGFU-THC")


class Recorder:
    """Stands in for DicomIngest.refresh_studies: notes each call and when it came."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, set[str]]] = []
        self.called = threading.Event()

    def __call__(self, study_uids: set[str], origin: Origin) -> None:
        self.calls.append((time.monotonic(), set(study_uids)))
        self.called.set()

    def studies(self) -> list[str]:
        return sorted(uid for _, uids in self.calls for uid in uids)


def test_a_burst_of_requests_refreshes_each_study_once_when_quiet() -> None:
    recorder = Recorder()
    refresher = StudyRefresher(recorder, quiet=0.2, longest=5)
    refresher.start()
    try:
        start = time.monotonic()
        for _ in range(5):
            refresher.request({"1.2.3"}, ORIGIN)
            time.sleep(0.05)
        refresher.request({"1.2.3", "1.2.4"}, ORIGIN)
        assert recorder.called.wait(5)
        time.sleep(0.3)
    finally:
        refresher.stop()
    assert recorder.studies() == ["1.2.3", "1.2.4"]  # once each, not six times
    assert recorder.calls[0][0] - start >= 0.25 + 0.2  # after the last request had been quiet


def test_a_study_that_never_goes_quiet_is_refreshed_at_the_longest_wait() -> None:
    recorder = Recorder()
    refresher = StudyRefresher(recorder, quiet=0.3, longest=0.6)
    refresher.start()
    try:
        start = time.monotonic()
        while not recorder.called.is_set() and time.monotonic() - start < 3:
            refresher.request({"1.2.3"}, ORIGIN)  # an association every 0.1 s
            time.sleep(0.1)
    finally:
        refresher.stop()
    first = recorder.calls[0][0] - start
    assert 0.55 <= first < 1.5


def test_stopping_refreshes_what_still_waits() -> None:
    recorder = Recorder()
    refresher = StudyRefresher(recorder, quiet=60, longest=600)
    refresher.start()
    refresher.request({"1.2.3"}, ORIGIN)
    refresher.stop()
    assert recorder.studies() == ["1.2.3"]
    refresher.request({"1.2.5"}, ORIGIN)  # stopped: at once, in the caller's thread
    assert recorder.studies() == ["1.2.3", "1.2.5"]


def test_a_failed_refresh_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    done: list[set[str]] = []

    def refresh(study_uids: set[str], origin: Origin) -> None:
        if "bad" in study_uids:
            raise RuntimeError("database gone")
        done.append(study_uids)

    refresher = StudyRefresher(refresh, quiet=0.05, longest=1)
    refresher.start()
    refresher.request({"bad"}, ORIGIN)
    time.sleep(0.2)
    refresher.request({"good"}, ORIGIN)
    refresher.stop()
    assert done == [{"good"}]
    assert "refreshing an ImagingStudy failed: RuntimeError" in caplog.text


@pytest.mark.slow
def test_an_association_per_image_makes_few_imaging_study_versions(
    demo: Context, tmp_path: Path
) -> None:
    server = DicomServer(
        demo.dicom,
        ScpSettings(port=0, study_quiet_seconds=0.5),
        known_ae_titles=demo.dicom.known_ae_titles,
    )
    server.start()
    try:
        files = copy_with_new_uids(sample("CT_small.dcm"), tmp_path, 6)
        for path in files:  # a modality that opens an association for each image
            assert "Success" in storescu(server.port, path)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            [study] = find_one(demo, "ImagingStudy")
            if study.get("numberOfInstances") == 6:
                break
            time.sleep(0.05)
    finally:
        server.stop()
    assert study["numberOfInstances"] == 6 and len(study["series"][0]["instance"]) == 6
    with demo.engine.connect() as conn:
        versions = conn.execute(
            select(func.count())
            .select_from(schema.resource_version)
            .where(schema.resource_version.c.res_type == "ImagingStudy")
        ).scalar()
    assert versions is not None and versions <= 3  # was one per association, 6 or more
