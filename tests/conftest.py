"""Shared fixtures. The suite runs on SQLite by default and on PostgreSQL when
YILIAN_TEST_DATABASE_URL names a server (a database is created for the run and dropped after).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, insert, text
from sqlalchemy.engine import make_url

from gateway.app import create_app
from gateway.context import Context
from gateway.settings import Settings
from records import schema
from security.principal import Principal
from tests.fhir_schema import assert_r4

PG_ENV = "YILIAN_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with suite_database(tmp_path_factory.mktemp("db") / "yilian-test.db", "yilian_test") as url:
        yield url


@contextmanager
def suite_database(sqlite_file: Path, prefix: str) -> Iterator[str]:
    """An empty database of the suite's kind: ``sqlite_file``, or a new database on the
    PostgreSQL server (named from ``prefix``) for as long as the block runs."""
    server = os.environ.get(PG_ENV)
    if not server:
        yield f"sqlite:///{sqlite_file}"
        return
    with postgres_database(server, prefix) as url:
        yield url


@contextmanager
def postgres_database(server: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the server for as long as the block runs."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8'"))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def fresh_database(tmp_path: Path) -> Iterator[str]:
    """An empty database of the suite's kind for one test: a SQLite file under ``tmp_path/var``,
    or a new database on the PostgreSQL server."""
    with suite_database(tmp_path / "var" / "yilian.db", "yilian_fresh") as url:
        yield url


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("var")


@pytest.fixture(scope="session")
def settings(database_url: str, data_dir: Path) -> Settings:
    # hl7_workers=0: messages prepared in the test's process (tests of the worker pool set it)
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        mllp_port=0,
        dicom_port=0,
        hl7_workers=0,
        dicom_processes=1,
    )


@pytest.fixture(scope="session")
def _context(settings: Settings) -> Iterator[Context]:
    ctx = Context.build(settings)
    yield ctx
    ctx.close()


def reset(ctx: Context) -> None:
    """Empty every table and restart the audit chain, so each test starts clean."""
    with ctx.engine.begin() as conn:
        for table in reversed(schema.metadata.sorted_tables):
            conn.execute(delete(table))
        conn.execute(insert(schema.audit_head).values(id=1, seq=0, hash="0" * 64))
    ctx.dicom.forget_devices()
    if ctx.subscriptions is not None:
        ctx.subscriptions.invalidate()  # the rows went without the records boundary seeing it


@pytest.fixture
def ctx(_context: Context) -> Context:
    reset(_context)
    return _context


class FhirClient(TestClient):
    """A TestClient that checks every FHIR JSON response against the official R4 schema."""

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().request(*args, **kwargs)
        if response.headers.get("content-type", "").startswith("application/fhir+json"):
            assert_r4(response.json())
        return response


@pytest.fixture
def client(ctx: Context, settings: Settings) -> Iterator[FhirClient]:
    app = create_app(settings, ctx)
    with FhirClient(app) as test_client:
        yield test_client


@pytest.fixture
def demo(ctx: Context) -> Context:
    from gateway import demo as demo_data

    demo_data.load(ctx)
    return ctx


def bearer(ctx: Context, principal: Principal) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx.tokens.issue(principal)}"}


def stored_notification(
    ctx: Context, recipient: str, text: str = "测试 test", sent: str = "2026-11-23T10:00:00+08:00"
) -> str:
    """The id of a notification the gateway wrote (a Communication about a demo resident's
    request, from the city hospital) to ``recipient`` ("Practitioner/..." or "Patient/...")."""
    from security.principal import SYSTEM
    from teleconsult import notify

    stored, _ = ctx.records.create(
        SYSTEM,
        "Communication",
        {
            "resourceType": "Communication",
            "status": "completed",
            "category": [{"coding": [{"system": notify.CATEGORY, "code": "accepted"}]}],
            "subject": {"reference": "Patient/demo-wang-xiuying"},
            "about": [{"reference": "Task/t1"}],
            "recipient": [{"reference": recipient}],
            "sender": {"reference": "Organization/CITY-FIRST", "display": "市第一人民医院"},
            "sent": sent,
            "payload": [{"contentString": text}, {"contentString": f"{text} (en)"}],
        },
    )
    return str(stored.res_id)


@pytest.fixture
def as_user(demo: Context):  # type: ignore[no-untyped-def]
    """as_user('doctor.xingfu') -> Authorization headers for that demo user."""
    from records import users

    def headers(username: str) -> dict[str, str]:
        with demo.engine.begin() as conn:
            user = users.get(conn, username)
        assert user is not None, username
        return bearer(demo, user.principal())

    return headers
