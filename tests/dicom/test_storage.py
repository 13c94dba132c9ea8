"""The file object store: keys stay inside its folder; objects land whole and durable."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom.storage import FileStore


def test_an_object_put_is_read_back_and_the_source_is_gone(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    source = store.scratch() / "incoming.dcm"
    source.write_bytes(b"DICM" * 1000)
    store.put_file("studies/1.2/3.4/5.6.dcm", source)
    assert not source.exists()
    assert store.exists("studies/1.2/3.4/5.6.dcm")
    with store.open("studies/1.2/3.4/5.6.dcm") as f:
        assert f.read() == b"DICM" * 1000


@pytest.mark.parametrize("key", ["../outside.dcm", "studies/../../x", "/etc/passwd", ""])
def test_a_key_outside_the_store_is_refused(tmp_path: Path, key: str) -> None:
    store = FileStore(tmp_path / "objects")
    with pytest.raises(ValueError, match="outside the store"):
        store.path(key)
