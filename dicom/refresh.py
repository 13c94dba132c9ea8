"""Bringing ImagingStudy resources up to date after associations end, once per burst.

Each instance's own unit of work files it and adds a new series to its study's ImagingStudy; the
counts and instance lists are brought up to date when the association that sent them ends
(``DicomIngest.refresh_studies``). A modality that opens an association per image ends an
association per image: refreshing at each would rewrite the whole ImagingStudy, a new version
listing every instance so far, at every image (for a 300-image series, 300 versions, the last
ones 8 ms each). So the refresh waits until the study has been quiet for ``quiet`` seconds, and
never longer than ``longest`` seconds after the first request, then runs once for everything
asked meanwhile. ``stop`` runs what is still waiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dicom.ingest import Origin

log = logging.getLogger(__name__)

Refresh = Callable[[set[str], Origin], None]  # DicomIngest.refresh_studies


@dataclass
class _Waiting:
    origin: Origin
    first: float  # monotonic time of the first request since the last refresh
    last: float  # of the latest


class StudyRefresher:
    def __init__(self, refresh: Refresh, *, quiet: float = 1.0, longest: float = 10.0) -> None:
        self._refresh = refresh
        self.quiet = quiet
        self.longest = longest
        self._waiting: dict[str, _Waiting] = {}
        self._changed = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="study-refresh", daemon=True)
        self._thread.start()

    def request(self, study_uids: set[str], origin: Origin) -> None:
        """Refresh these studies once they have been quiet (or at once, when not started)."""
        if self._thread is None:
            self._refresh(study_uids, origin)
            return
        now = time.monotonic()
        with self._changed:
            for uid in study_uids:
                waiting = self._waiting.get(uid)
                if waiting is None:
                    self._waiting[uid] = _Waiting(origin, now, now)
                else:
                    waiting.last, waiting.origin = now, origin
            self._changed.notify()

    def stop(self) -> None:
        """Stop, after refreshing every study still waiting."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with self._changed:
            self._stopping = True
            self._changed.notify()
        thread.join(60)

    def _run(self) -> None:
        while True:
            with self._changed:
                due, wait = self._due(time.monotonic())
                if not due and not self._stopping:
                    self._changed.wait(wait)
                    continue
                if self._stopping:
                    due = list(self._waiting.items())
                for uid, _ in due:
                    del self._waiting[uid]
                stopping = self._stopping
            for uid, waiting in due:
                self._run_one(uid, waiting.origin)
            if stopping:
                return

    def _due(self, now: float) -> tuple[list[tuple[str, _Waiting]], float | None]:
        """The studies due now, and how long until the next one is (None: nothing waits)."""
        due, wait = [], None
        for uid, waiting in self._waiting.items():
            at = min(waiting.last + self.quiet, waiting.first + self.longest)
            if at <= now:
                due.append((uid, waiting))
            else:
                wait = at - now if wait is None else min(wait, at - now)
        return due, wait

    def _run_one(self, study_uid: str, origin: Origin) -> None:
        try:
            self._refresh({study_uid}, origin)
        except Exception as exc:  # noqa: BLE001 - the next association of the study retries it
            log.error("refreshing an ImagingStudy failed: %s", type(exc).__name__)
