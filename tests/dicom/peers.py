"""The real DICOM peers of PEERS.md (dcmtk), for tests: run with TCP_NODELAY=1.

dcmtk's programs are called by their full path: pynetdicom installs Python programs of the same
names (storescu, findscu, ...) that come first on a pyenv PATH.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DCMTK = Path("/usr/bin")


def dcmtk(program: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    path = DCMTK / program
    assert path.exists(), f"dcmtk's {program} is not installed (apt-get install dcmtk)"
    return subprocess.run(
        [str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )
