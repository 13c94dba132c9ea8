"""One validated settings object: YILIAN_* environment variables over an optional TOML file.

Precedence (highest first): environment variables, the TOML file given with
``yilian serve --config FILE`` (or ``YILIAN_CONFIG``), then the defaults below, which are
the ones DESIGN.md promises. See ``deploy/yilian.example.toml`` for a commented file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from records.db import sqlite_in_memory


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YILIAN_", extra="forbid")

    data_dir: Path = Field(default=Path("./var"), description="all local state lives here")
    database_url: str = Field(default="", description="empty: SQLite file in the data dir")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # HTTPS on http_port when cert and key are set. With a CA, clients are asked for a
    # certificate but may go without (browsers, apps); one that is presented must verify, and
    # its common name names the consortium member calling (gateway.deps.peer_organization_code).
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    http_tls_client_ca: Path | None = None
    mllp_port: int = Field(default=2575, ge=0, le=65535)
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    dicom_ae: str = Field(default="YILIAN", min_length=1, max_length=16)
    token_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    token_issuer: str = "yilian"
    log_level: str = "INFO"
    sqlite_synchronous: str = Field(default="FULL", pattern="^(FULL|NORMAL|EXTRA)$")
    page_size_default: int = Field(default=20, ge=1, le=1000)
    page_size_max: int = Field(default=500, ge=1, le=10000)

    # HL7 v2 over MLLP. TLS when cert and key are set; with a CA, client certificates are
    # required and their common name names the sending Organization (e.g. XINGFU_THC).
    mllp_enabled: bool = True
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None
    hl7_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # the largest STOW-RS request body (all its instances); larger ones are answered 413
    dicom_stow_max_bytes: int = Field(default=4 * 1024**3, ge=1024 * 1024)
    mllp_idle_timeout: float = Field(default=300.0, gt=0)
    mllp_frame_timeout: float = Field(default=30.0, gt=0)
    # Time zone of local times in messages that carry none (China Standard Time).
    hl7_default_tz: str = Field(default="+08:00", pattern=r"^[+-]\d{2}:\d{2}$")
    # Character set per sending facility (MSH-4) for senders that leave MSH-18 empty.
    hl7_sender_charsets: dict[str, str] = Field(default_factory=dict)
    # DICOM: the SCP on dicom_port (AE title dicom_ae). TLS when cert and key are set; with a
    # CA, client certificates are required. Calling AE titles must belong to registered Devices.
    dicom_enabled: bool = True
    dicom_tls_cert: Path | None = None
    dicom_tls_key: Path | None = None
    dicom_tls_client_ca: Path | None = None
    ingest_threads: int = Field(default=8, ge=1, le=64)
    # Processes that parse and map HL7 v2 beside the gateway's own (None: one per CPU when
    # there are several; 0: none, everything in the gateway's process).
    hl7_workers: int | None = Field(default=None, ge=0, le=64)
    # Processes serving DICOM associations, the gateway's own included, all on the one listening
    # socket (None: one per CPU, at most 4, on a database several processes can share; 1: the
    # gateway's own only). Each has its own interpreter lock: four associations of small images
    # on two cores went about a fifth faster with two.
    dicom_processes: int | None = Field(default=None, ge=1, le=16)
    # Processes that read arriving DICOM objects' headers beside a DICOM process (None: one when
    # the gateway's is the only DICOM process and there are several CPUs; 0: none).
    dicom_readers: int | None = Field(default=None, ge=0, le=64)

    # Remote diagnosis. Routing rules (TOML, see deploy/routing.example.toml; empty: any
    # hospital department on duty). Delivery to other members: threads of this process taking
    # outbox rows; FHIR messages and DICOM go out with this client certificate (its common
    # name is this member's code), checked against the consortium CA.
    routing_rules: Path | None = None
    delivery_workers: int = Field(default=1, ge=0, le=16)
    outbox_lease_seconds: float = Field(default=60.0, ge=1)
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    outbox_retry_base: float = Field(default=2.0, ge=0)
    outbox_retry_cap: float = Field(default=600.0, ge=0)
    outbox_max_attempts: int = Field(default=200, ge=1)
    # a row whose fault is this gateway's configuration (endpoint off or not TLS, no
    # credentials, our certificate expired) waits this long between looks, attempts not counted
    outbox_hold_seconds: float = Field(default=60.0, gt=0)
    # how often requests past their deadline are escalated (0: never)
    escalation_interval_seconds: float = Field(default=60.0, ge=0)
    consortium_tls_cert: Path | None = None
    consortium_tls_key: Path | None = None
    consortium_tls_ca: Path | None = None
    # The client id and secret each member issued to this gateway (`yilian users add NAME
    # --role peer --client` at that member), by member code: {"CITY_FIRST": {"client_id":
    # "...", "client_secret": "..."}}
    peer_credentials: dict[str, dict[str, str]] = Field(default_factory=dict)

    @property
    def resolved_hl7_workers(self) -> int:
        if self.hl7_workers is not None:
            return self.hl7_workers
        if self._database_in_memory():
            return 0
        cpus = os.cpu_count() or 1
        return cpus if cpus > 1 else 0

    @property
    def resolved_dicom_processes(self) -> int:
        if self.dicom_processes is not None:
            return self.dicom_processes
        if self._database_in_memory():
            return 1
        return min(os.cpu_count() or 1, 4)

    @property
    def resolved_dicom_readers(self) -> int:
        if self.dicom_readers is not None:
            return self.dicom_readers
        return 1 if (os.cpu_count() or 1) > 1 and self.resolved_dicom_processes == 1 else 0

    def _database_in_memory(self) -> bool:
        return sqlite_in_memory(self.resolved_database_url)

    @field_validator("dicom_ae")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if not value.isascii() or "\\" in value or value != value.strip():
            raise ValueError("AE title must be up to 16 ASCII characters without backslash")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        for listener in ("http", "mllp", "dicom"):
            cert, key, ca = self.tls_files(listener)
            if bool(cert) != bool(key):
                raise ValueError(
                    f"{listener}_tls_cert and {listener}_tls_key go together: set both or neither"
                )
            if ca and not cert:
                raise ValueError(
                    f"{listener}_tls_client_ca needs {listener}_tls_cert and {listener}_tls_key"
                )
        return self

    def tls_files(self, listener: str) -> tuple[Path | None, Path | None, Path | None]:
        """(certificate, key, client CA) of a listener ("http", "mllp" or "dicom")."""
        return (
            getattr(self, f"{listener}_tls_cert"),
            getattr(self, f"{listener}_tls_key"),
            getattr(self, f"{listener}_tls_client_ca"),
        )

    @field_validator("peer_credentials")
    @classmethod
    def _credentials(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for member, pair in value.items():
            missing = {"client_id", "client_secret"} - set(pair)
            if missing:
                raise ValueError(f"peer_credentials.{member} needs {', '.join(sorted(missing))}")
        return value

    @model_validator(mode="after")
    def _consortium_tls(self) -> Settings:
        files = (self.consortium_tls_cert, self.consortium_tls_key, self.consortium_tls_ca)
        if any(files) and not all(files):
            raise ValueError(
                "consortium_tls_cert, consortium_tls_key and consortium_tls_ca go together"
            )
        return self

    @field_validator("hl7_sender_charsets")
    @classmethod
    def _charsets(cls, value: dict[str, str]) -> dict[str, str]:
        import codecs

        for facility, name in value.items():
            try:
                codecs.lookup(name)
            except LookupError:
                raise ValueError(
                    f"hl7_sender_charsets: {facility} = '{name}' is not a known "
                    "character set (try gb18030, gbk, utf-8)"
                ) from None
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'yilian.db').resolve()}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment over the TOML file (``--config`` or YILIAN_CONFIG).

    A missing config file is an error that names the file.
    """
    chosen = config_file or os.environ.get("YILIAN_CONFIG")
    if not chosen:
        return Settings(**overrides)
    path = Path(chosen)
    if not path.is_file():
        raise SystemExit(f"yilian: config file {path} does not exist")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    return FileSettings(**overrides)
