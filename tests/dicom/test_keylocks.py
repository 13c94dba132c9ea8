"""One filing of a key at a time: across threads, and across processes through a lock file."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dicom.keylocks import KeyedLocks

HOLD = """
import sys
from pathlib import Path
from dicom.keylocks import KeyedLocks
with KeyedLocks(Path(sys.argv[1])).hold(sys.argv[2]):
    print("holding", flush=True)
    sys.stdin.read()
"""


def _held_elsewhere(lock_file: Path, key: str) -> subprocess.Popen[bytes]:
    """A child process holding ``key`` until its standard input is closed."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_file), key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"holding\n"
    return child


def _hold_in_thread(locks: KeyedLocks, key: str) -> tuple[threading.Thread, threading.Event]:
    got = threading.Event()

    def hold() -> None:
        with locks.hold(key):
            got.set()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread, got


def test_a_key_held_by_another_process_is_waited_for(tmp_path: Path) -> None:
    lock_file = tmp_path / "filing.lock"
    child = _held_elsewhere(lock_file, "1.2.3.4")
    locks = KeyedLocks(lock_file)
    thread, got = _hold_in_thread(locks, "1.2.3.4")
    assert not got.wait(0.5), "held here while another process held it"
    assert child.stdin is not None
    child.stdin.close()
    assert child.wait(10) == 0
    assert got.wait(10)
    thread.join()
    locks.close()


def test_other_keys_are_not_held_up(tmp_path: Path) -> None:
    lock_file = tmp_path / "filing.lock"
    child = _held_elsewhere(lock_file, "1.2.3.4")
    locks = KeyedLocks(lock_file)
    try:
        thread, got = _hold_in_thread(locks, "1.2.3.5")
        assert got.wait(10)
        thread.join()
        assert locks.busy() == 0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
        locks.close()


def test_two_holders_of_one_lock_file_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    """Each holds its own open description of the file: one does not release the other's
    lock, as a process's own locks (``lockf``) would."""
    first, second = KeyedLocks(tmp_path / "l"), KeyedLocks(tmp_path / "l")
    with first.hold("k"):
        thread, got = _hold_in_thread(second, "k")
        assert not got.wait(0.3)
    assert got.wait(10)
    thread.join()
    first.close()
    second.close()


def test_without_a_usable_lock_file_the_process_own_turns_still_hold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    locks = KeyedLocks(tmp_path / "missing" / "filing.lock")
    with locks.hold("k"):
        thread, got = _hold_in_thread(locks, "k")
        assert not got.wait(0.3)
    assert got.wait(10)
    thread.join()
    assert "filing locks across processes are off" in caplog.text
