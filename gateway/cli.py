"""The `yilian` command."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from gateway.cli_common import _context, _settings, config_option
from gateway.cli_teleconsult import consortium, outbox_group
from records.db import reader


@click.group()
def main() -> None:
    """Yilian (医联): the county medical consortium gateway."""


@main.command()
@config_option
def serve(config: Path | None) -> None:
    """Start everything in one process: HTTP (and, as they are added, MLLP, DICOM, workers)."""
    import uvicorn

    from gateway.app import create_app
    from gateway.https import uvicorn_config
    from gateway.observability import configure_logging

    settings = _settings(config)
    configure_logging(settings.log_level)
    app = create_app(settings)

    class Server(uvicorn.Server):
        """SIGTERM/SIGINT: finish in-flight requests, run the lifespan shutdown, exit 0.
        (uvicorn would re-raise the signal afterwards, ending with status -15.)"""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            handlers = {
                sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)

    server = Server(
        uvicorn_config(  # HTTPS when http_tls_* are set; requests see the client certificate
            app, settings, log_config=None, access_log=False, timeout_graceful_shutdown=10
        )
    )
    server.run()
    if not server.started:
        sys.exit(1)  # could not start (port taken, database unreachable): uvicorn logged why


@main.command()
@config_option
def demo(config: Path | None) -> None:
    """Load the demo consortium (safe to run again, before or after `yilian serve`)."""
    from gateway import demo as demo_data

    ctx = _context(config)
    try:
        loaded = demo_data.load(ctx)
    finally:
        ctx.close()
    click.echo(f"Demo consortium loaded into {ctx.settings.data_dir.resolve()}")
    click.echo(f"Every demo user's password: {demo_data.DEMO_PASSWORD}")
    for user in loaded:
        extra = f" patient={user.patient_id}" if user.patient_id else ""
        org_ref = f"Organization/{demo_data.org(user.organization)}"
        click.echo(f"  {user.username:<16} {user.role.value:<16} {org_ref}{extra}")


@main.group()
def users() -> None:
    """Manage users and system clients."""


@users.command("add")
@click.argument("username")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["township_doctor", "specialist", "resident", "insurer", "admin", "peer"]),
)
@click.option(
    "--org",
    "organization",
    required=True,
    help="the user's Organization: its code (XINGFU_THC) or FHIR id (XINGFU-THC)",
)
@click.option("--patient", "patient_id", default=None, help="a resident's own Patient id")
@click.option(
    "--practitioner", "practitioner_id", default=None, help="a clinician's Practitioner id"
)
@click.option("--display", default=None)
@click.option("--client", is_flag=True, help="a system client (client_credentials grant)")
@click.option(
    "--password",
    default=None,
    help="the password or client secret; generated and printed when left out",
)
@config_option
def users_add(
    username,
    role,
    organization,
    patient_id,
    practitioner_id,
    display,
    client,  # type: ignore[no-untyped-def]
    password,
    config,
) -> None:
    """Add a user (or, with --client, a system client)."""
    from records import users as user_store
    from records.errors import FhirError
    from security.passwords import new_secret
    from security.principal import Role

    ctx = _context(config)
    secret = password or new_secret()
    try:
        with ctx.engine.begin() as conn:
            user_store.add(
                conn,
                username,
                secret,
                Role(role),
                organization,
                kind="client" if client else "person",
                patient_id=patient_id,
                practitioner_id=practitioner_id,
                display=display,
            )
    except FhirError as exc:
        raise click.ClickException(exc.diagnostics) from None
    finally:
        ctx.close()
    click.echo(f"added {'client' if client else 'user'} {username} ({role}, {organization})")
    if password is None:
        click.echo(f"{'client secret' if client else 'password'}: {secret}")


@users.command("list")
@config_option
def users_list(config: Path | None) -> None:
    """List users."""
    from records import users as user_store

    ctx = _context(config)
    with ctx.engine.begin() as conn:
        found = user_store.all_users(conn)
    ctx.close()
    for user in found:
        click.echo(f"{user.username:<20} {user.kind:<7} {user.role.value:<16} {user.organization}")


@main.command()
@click.option("--user", "username", required=True)
@config_option
def token(username: str, config: Path | None) -> None:
    """Print a bearer token for USER (an operator tool; the login is audited)."""
    from records import users as user_store
    from records.audit_log import Event

    ctx = _context(config)
    try:
        with ctx.engine.begin() as conn:
            user = user_store.get(conn, username)
        if user is None or not user.active:
            raise click.ClickException(f"no active user named {username}")
        principal = user.principal("cli")
        ctx.records.audit(principal, Event("login", (), (), "success", "yilian token"))
        click.echo(ctx.tokens.issue(principal))
    finally:
        ctx.close()


@main.group()
def audit() -> None:
    """The audit chain."""


@audit.command("verify")
@config_option
def audit_verify(config: Path | None) -> None:
    """Check the hash chain; exit 1 and name the first bad record if it is broken."""
    from records import audit_log

    ctx = _context(config)
    try:
        with reader(ctx.engine).connect() as conn:
            count, broken = audit_log.verify(conn)
    finally:
        ctx.close()
    if broken is not None:
        click.echo(f"audit chain BROKEN at record {broken.seq}: {broken.reason}", err=True)
        click.echo(f"({count} records read)", err=True)
        sys.exit(1)
    click.echo(f"audit chain intact: {count} records")


@main.group()
def hl7() -> None:
    """The archive of received HL7 v2 messages."""


@hl7.command("list")
@click.option(
    "--outcome",
    type=click.Choice(["accepted", "accepted-with-warnings", "rejected", "failed"]),
    default=None,
)
@click.option("--limit", default=50, show_default=True)
@config_option
def hl7_list(outcome: str | None, limit: int, config: Path | None) -> None:
    """List archived messages, newest first."""
    from records import inbound

    ctx = _context(config)
    try:
        with reader(ctx.engine).connect() as conn:
            total, rows = inbound.listing(conn, protocol="hl7v2", outcome=outcome, limit=limit)
    finally:
        ctx.close()
    click.echo(f"{total} message(s)")
    for row in rows:
        click.echo(
            f"{row.id}  {row.received:%Y-%m-%d %H:%M:%S}  {row.outcome:<22} "
            f"{row.ack_code or '--':<2}  {row.message_type or '?':<10} "
            f"{row.sender or '?'}  {row.control_id or ''}"
        )


@hl7.command("show")
@click.argument("archive_id")
@config_option
def hl7_show(archive_id: str, config: Path | None) -> None:
    """Show one archived message: outcome, warnings, the message and the ACK sent."""
    from gateway.routers.admin import detail
    from records import inbound

    ctx = _context(config)
    try:
        with reader(ctx.engine).connect() as conn:
            row = inbound.get(conn, archive_id)
    finally:
        ctx.close()
    if row is None:
        raise click.ClickException(f"no archived message {archive_id}")
    shown = detail(row)
    for key in (
        "id",
        "received",
        "origin",
        "sender",
        "control_id",
        "message_type",
        "version",
        "charset",
        "outcome",
        "ack_code",
        "error",
        "attempts",
    ):
        click.echo(f"{key:>13}: {shown[key]}")
    for warning in shown["warnings"]:
        click.echo(f"      warning: {warning}")
    for ref in shown["resources"]:
        click.echo(f"     resource: {ref}")
    click.echo("--- message")
    click.echo((shown["message"] or "").replace("\r", "\n"))
    click.echo("--- ack")
    click.echo((shown["ack"] or "(none)").replace("\r", "\n"))


@hl7.command("reprocess")
@click.argument("archive_id")
@config_option
def hl7_reprocess(archive_id: str, config: Path | None) -> None:
    """Run an archived message through the ingest again."""
    from security.principal import Principal, Role

    ctx = _context(config)
    try:
        operator = Principal("operator-cli", Role.SYSTEM, source="cli")
        reply = ctx.hl7.reprocess(archive_id, operator)
    finally:
        ctx.close()
    if reply is None:
        raise click.ClickException(f"no archived HL7 message {archive_id}")
    click.echo(f"{archive_id}: {reply.outcome} ({reply.code or 'no ACK requested'})")
    if reply.error:
        click.echo(f"error: {reply.error}")
    if reply.outcome in ("rejected", "failed"):
        sys.exit(1)


@main.group()
def dicom() -> None:
    """DICOM objects the gateway could not file."""


@dicom.group("quarantine")
def dicom_quarantine() -> None:
    """List, read and retry quarantined DICOM objects."""


@dicom_quarantine.command("list")
@click.option("--all", "everything", is_flag=True, help="released ones too")
@click.option("--limit", default=50, show_default=True)
@config_option
def quarantine_list(everything: bool, limit: int, config: Path | None) -> None:
    """Quarantined objects, newest first."""
    from dicom import quarantine

    ctx = _context(config)
    try:
        rows = quarantine.entries(
            ctx.engine, status=None if everything else quarantine.QUARANTINED, limit=limit
        )
    finally:
        ctx.close()
    click.echo(f"{len(rows)} object(s)")
    for row in rows:
        click.echo(
            f"{row.id}  {row.received:%Y-%m-%d %H:%M:%S}  {row.status:<11} "
            f"{row.calling_ae or '?':<16} {row.size:>10}  {row.reason[:80]}"
        )


@dicom_quarantine.command("show")
@click.argument("quarantine_id")
@config_option
def quarantine_show(quarantine_id: str, config: Path | None) -> None:
    """One quarantined object: who sent it, when, why it was not filed, where it is kept."""
    from dicom import quarantine

    ctx = _context(config)
    try:
        row = quarantine.get(ctx.engine, quarantine_id)
        path = ctx.dicom.store.path(row.storage_key) if row and row.storage_key else None
    finally:
        ctx.close()
    if row is None:
        raise click.ClickException(f"no quarantined DICOM object {quarantine_id}")
    for label, value in (
        ("id", row.id),
        ("received", f"{row.received:%Y-%m-%d %H:%M:%S}"),
        ("status", row.status),
        ("attempts", row.attempts),
        ("origin", row.origin),
        ("calling AE", row.calling_ae),
        ("peer", row.peer),
        ("SOP class", row.sop_class),
        ("SOP instance", row.sop_uid),
        ("size", row.size),
        ("file", path),
        ("reason", row.reason),
    ):
        click.echo(f"{label:<13}{value if value is not None else '-'}")


@dicom_quarantine.command("retry")
@click.argument("quarantine_id")
@config_option
def quarantine_retry(quarantine_id: str, config: Path | None) -> None:
    """File a quarantined object again (after its device was registered, say)."""
    ctx = _context(config)
    try:
        outcome = ctx.dicom.retry(quarantine_id)
    finally:
        ctx.close()
    if outcome is None:
        raise click.ClickException(f"nothing to retry for {quarantine_id}")
    click.echo(
        f"{quarantine_id}: {outcome.result}" + (f" ({outcome.reason})" if outcome.reason else "")
    )
    if not outcome.ok:
        sys.exit(1)


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@config_option
def db_upgrade(config: Path | None) -> None:
    """Apply pending migrations (serve and every command do this on start)."""
    ctx = _context(config)
    ctx.close()
    click.echo("schema is current")


main.add_command(consortium)
main.add_command(outbox_group)

if __name__ == "__main__":
    main()
