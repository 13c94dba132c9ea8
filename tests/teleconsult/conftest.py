"""Two members in one test process: a township gateway and a tertiary hospital's, each with its
own settings, database, data folder and client certificate, each served over HTTPS with client
certificates asked for, as ``yilian serve`` serves them. The tests drive the township's courier
by hand (``deliver``) so each step can be looked at."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import demo
from gateway.app import create_app
from gateway.context import Context
from gateway.settings import Settings
from records import outbox, store, users
from records.outbox import Entry
from security.principal import SYSTEM, Role
from teleconsult import directory
from tests.teleconsult.processes import database
from tests.tls import TestCA, make_ca, serving

TOWNSHIP, HOSPITAL, OTHER = "XINGFU_THC", "CITY_FIRST", "CITY_CENTRAL"


@dataclass
class Member:
    code: str
    settings: Settings
    ctx: Context
    port: int = 0
    secrets: dict[str, str] = field(default_factory=dict)  # peer client secrets issued here
    dicom_port: int = 0  # the DICOM SCP's, when it runs

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    def token(self, username: str) -> dict[str, str]:
        with self.ctx.engine.begin() as conn:
            user = users.get(conn, username)
        assert user is not None, username
        return {"Authorization": f"Bearer {self.ctx.tokens.issue(user.principal())}"}

    def api(self, ca: TestCA) -> httpx.Client:
        return httpx.Client(base_url=self.base, verify=str(ca.ca_cert), timeout=30)

    def deliver(self, limit: int = 50) -> list[Entry]:
        """Run the courier until nothing is due (what the workers would do)."""
        done = []
        for _ in range(limit):
            entry = self.ctx.courier.deliver_next()
            if entry is None:
                break
            done.append(entry)
        return done

    def outbox(self, **filters: Any) -> list[Entry]:
        return outbox.listing(self.ctx.engine, **filters)

    def due_now(self) -> None:
        """Make every waiting row due (as if its backoff or hold had passed)."""
        from datetime import UTC, datetime

        from sqlalchemy import update

        from records.schema import outbox as table

        with self.ctx.engine.begin() as conn:
            conn.execute(
                update(table)
                .where(table.c.status == outbox.PENDING, table.c.lease_until.is_(None))
                .values(next_attempt=datetime.now(UTC))
            )

    def task(self, key: str) -> dict[str, Any]:
        from teleconsult.messages import REQUEST_KEY_SYSTEM

        with self.ctx.engine.connect() as conn:
            found = self.ctx.records.find_by_identifier(conn, "Task", REQUEST_KEY_SYSTEM, key)
        assert len(found) == 1, f"{self.code} holds {len(found)} Tasks for {key}"
        return found[0].json() | {"id": found[0].res_id}

    def point_at(
        self, other: Member | str, *, kind: str = directory.FHIR, address: str = ""
    ) -> None:
        """Give this member's directory the other member's endpoint (a running member, or a
        member code with ``address``), switched on."""
        code = other if isinstance(other, str) else other.code
        address = address or f"{other.base}/fhir"  # type: ignore[union-attr]
        body = directory.endpoint_body(demo.org(code), kind, address, active=True)
        organization = demo.org(code)
        with self.ctx.engine.begin() as conn:
            store.write(conn, "Endpoint", directory.endpoint_id(organization, kind), body, "PUT")


@pytest.fixture(scope="module")
def consortium_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(
        tmp_path_factory.mktemp("consortium-ca"),
        clients=[TOWNSHIP, HOSPITAL, OTHER],
        expired_clients=["EXPIRED"],
    )


def member_settings(
    code: str, folder: Path, url: str, ca: TestCA, credentials: dict[str, dict[str, str]]
) -> Settings:
    cert, key = ca.client_files(code)
    return Settings(
        data_dir=folder / code,
        database_url=url,
        http_port=0,
        http_tls_cert=ca.server_cert,
        http_tls_key=ca.server_key,
        http_tls_client_ca=ca.ca_cert,
        mllp_enabled=False,
        dicom_enabled=False,
        hl7_workers=0,
        consortium_tls_cert=cert,
        consortium_tls_key=key,
        consortium_tls_ca=ca.ca_cert,
        peer_credentials=credentials,
        outbox_retry_base=0.0,
        outbox_retry_cap=0.0,
        outbox_max_attempts=5,
        dicom_ae=code.split("_")[0][:16],
    )


@contextmanager
def running_member(
    code: str, folder: Path, ca: TestCA, peers: list[str], **overrides: Any
) -> Iterator[Member]:
    """A member gateway with the demo directory, a peer client for each of ``peers`` (member
    codes that may deliver to it), credentials for delivering to each of them, served over
    HTTPS in a thread."""
    with ExitStack() as stack:
        url = stack.enter_context(database(folder, code.lower()))
        secrets = {peer: f"secret-of-{peer.lower()}-at-{code.lower()}" for peer in peers}
        credentials = {
            peer: {
                "client_id": f"{code.lower()}-gateway",
                "client_secret": f"secret-of-{code.lower()}-at-{peer.lower()}",
            }
            for peer in peers
        }
        settings = member_settings(code, folder, url, ca, credentials).model_copy(update=overrides)
        ctx = Context.build(settings)
        stack.callback(ctx.close)
        demo.load(ctx)
        with ctx.engine.begin() as conn:
            for peer, secret in secrets.items():
                users.add(
                    conn,
                    f"{peer.lower()}-gateway",
                    secret,
                    Role.PEER,
                    demo.org(peer),
                    kind="client",
                )
        app = create_app(settings, ctx)
        port = stack.enter_context(serving(app, settings, lifespan="on"))
        dicom = getattr(app.state, "dicom", None)
        yield Member(code, settings, ctx, port, secrets, dicom.port if dicom else 0)


@pytest.fixture
def pair(tmp_path: Path, consortium_ca: TestCA) -> Iterator[tuple[Member, Member]]:
    """A township gateway and a tertiary hospital's, each knowing where the other is."""
    with running_member(TOWNSHIP, tmp_path, consortium_ca, [HOSPITAL]) as township:
        with running_member(HOSPITAL, tmp_path, consortium_ca, [TOWNSHIP]) as hospital:
            township.point_at(hospital)
            hospital.point_at(township)
            yield township, hospital


__all__ = ["SYSTEM", "Member", "pair", "running_member"]
