"""Everything the process wires once at start-up, held on ``app.state.ctx``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from gateway.settings import Settings
from records import db
from records.service import RecordService
from security.access import AccessPolicy
from security.tokens import TokenIssuer, load_or_create_signing_key


@dataclass
class Context:
    settings: Settings
    engine: Engine
    records: RecordService
    tokens: TokenIssuer

    @classmethod
    def build(cls, settings: Settings, *, migrate: bool = True) -> Context:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = db.make_engine(
            settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        if migrate:
            db.upgrade(engine)
        records = RecordService(
            engine,
            AccessPolicy(),
            default_count=settings.page_size_default,
            max_count=settings.page_size_max,
        )
        key = load_or_create_signing_key(settings.keys_dir)
        tokens = TokenIssuer(key, settings.token_issuer, settings.token_ttl_seconds)
        return cls(settings, engine, records, tokens)

    def close(self) -> None:
        self.engine.dispose()
