"""Settings: DESIGN.md defaults, TOML file, environment over file, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("YILIAN_"):
            monkeypatch.delenv(key)


def test_defaults_are_the_ones_design_promises() -> None:
    settings = Settings()
    assert settings.data_dir == Path("./var")
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert settings.mllp_port == 2575
    assert (settings.dicom_port, settings.dicom_ae) == (11112, "YILIAN")
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_database_url.endswith("/var/yilian.db")


def test_environment_wins_over_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "yilian.toml"
    config.write_text('http_port = 9000\nmllp_port = 3000\ndicom_ae = "COUNTY"\n')
    monkeypatch.setenv("YILIAN_HTTP_PORT", "9100")
    settings = load_settings(config)
    assert settings.http_port == 9100  # environment
    assert settings.mllp_port == 3000  # file
    assert settings.dicom_ae == "COUNTY"


def test_bad_settings_are_refused_with_the_key_named(tmp_path: Path) -> None:
    config = tmp_path / "yilian.toml"
    config.write_text("http_prot = 9000\n")
    with pytest.raises(ValidationError, match="http_prot"):
        load_settings(config)
    with pytest.raises(ValidationError, match="dicom_ae"):
        Settings(dicom_ae="THIS-AE-TITLE-IS-TOO-LONG")
    with pytest.raises(SystemExit, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_the_example_config_file_loads() -> None:
    example = Path(__file__).parents[2] / "deploy" / "yilian.example.toml"
    settings = load_settings(example)
    assert settings.http_port == 8080 and settings.sqlite_synchronous == "FULL"


@pytest.mark.parametrize("listener", ["mllp", "dicom"])
def test_a_tls_certificate_without_its_key_is_refused(listener: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=f"{listener}_tls_cert and {listener}_tls_key"):
        Settings(**{f"{listener}_tls_cert": tmp_path / "server.crt"})


@pytest.mark.parametrize(
    ("url", "cpus", "processes", "readers"),
    [
        ("sqlite:////srv/yilian.db", 2, 2, 0),  # a process per CPU, the second reads instead
        ("sqlite:////srv/yilian.db", 8, 4, 0),  # at most four
        ("sqlite:////srv/yilian.db", 1, 1, 0),
        ("postgresql+psycopg://yilian@db/yilian", 2, 2, 0),
        ("sqlite://", 2, 1, 1),  # each process would have a database of its own in memory
        ("sqlite:///:memory:", 2, 1, 1),
    ],
)
def test_dicom_processes_by_cpus_and_database(
    monkeypatch: pytest.MonkeyPatch, url: str, cpus: int, processes: int, readers: int
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    settings = Settings(database_url=url)
    assert settings.resolved_dicom_processes == processes
    assert settings.resolved_dicom_readers == readers
    chosen = Settings(database_url=url, dicom_processes=1, dicom_readers=3)
    assert (chosen.resolved_dicom_processes, chosen.resolved_dicom_readers) == (1, 3)
