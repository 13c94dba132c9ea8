"""`yilian consortium ...` (the directory) and `yilian outbox ...` (store-and-forward)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gateway.cli_common import _context, config_option


@click.group()
def consortium() -> None:
    """The consortium directory: members, their endpoints and reading departments."""


def _member(conn, code: str) -> str:  # type: ignore[no-untyped-def]
    """The Organization id of a member code, or the command stops saying it is unknown."""
    from teleconsult import directory

    organization = directory.organization_of_code(conn, code)
    if organization is None:
        raise click.ClickException(f"{code} is not a member in the directory")
    return organization


@consortium.command("list")
@config_option
def consortium_list(config: Path | None) -> None:
    """Members with their endpoints and departments."""
    from records.db import reader
    from teleconsult import directory

    ctx = _context(config)
    try:
        with reader(ctx.engine).connect() as conn:
            endpoints = directory.endpoints(conn)
            services = directory.services(conn)
            queues = {
                s.organization: directory.queue_length(conn, s.organization) for s in services
            }
    finally:
        ctx.close()
    for e in endpoints:
        state = "on " if e.active else "off"
        click.echo(f"endpoint  {e.organization:<16} {e.kind:<6} {state} {e.address}  ({e.id})")
    for s in services:
        kinds = ",".join(sorted(s.kinds))
        click.echo(
            f"service   {s.organization_code:<16} {kinds:<13} queue {queues[s.organization]:>3}  "
            f"{s.name}  [{s.hours()}]  ({s.id})"
        )


@consortium.command("endpoint")
@click.argument("member")
@click.option(
    "--fhir", "fhir_url", default=None, help="the member gateway's FHIR base (https://...)"
)
@click.option(
    "--dicom", "dicom_url", default=None, help="dicoms://AE_TITLE@host:port (DICOM over TLS)"
)
@click.option("--off", is_flag=True, help="switch the member's endpoints off (deliveries wait)")
@config_option
def consortium_endpoint(
    member: str, fhir_url: str | None, dicom_url: str | None, off: bool, config: Path | None
) -> None:
    """Set where a member is reached (MEMBER is its code, e.g. CITY_FIRST)."""
    from records import store
    from records.audit_log import Event
    from security.principal import SYSTEM
    from teleconsult import directory

    ctx = _context(config)
    try:
        with ctx.engine.begin() as conn:
            organization = _member(conn, member)
            changes = [(directory.FHIR, fhir_url), (directory.DICOM, dicom_url)]
            if off:
                changes = [(e.kind, e.address) for e in directory.endpoints(conn, organization)]
            for kind, address in changes:
                if not address:
                    continue
                body = directory.endpoint_body(organization, kind, address, active=not off)
                found = directory.endpoint(conn, organization, kind)
                rid = found.id if found else directory.endpoint_id(organization, kind)
                checked = directory.Endpoint.of(rid, body)
                if checked is not None:
                    try:
                        checked.check()
                    except directory.DirectoryError as exc:
                        raise click.ClickException(str(exc)) from None
                store.write(conn, "Endpoint", rid, body, "PUT")
                click.echo(f"{member} {kind}: {address} ({'off' if off else 'on'})")
        ctx.records.audit(SYSTEM, Event("consortium-endpoint", (f"Organization/{organization}",)))
    finally:
        ctx.close()


@consortium.command("key")
@config_option
def consortium_key(config: Path | None) -> None:
    """Print this gateway's report-signing public key (a JWK), for the other members."""
    ctx = _context(config)
    try:
        click.echo(json.dumps(ctx.teleconsult.public_jwk(), indent=2))
    finally:
        ctx.close()


@consortium.command("trust")
@click.argument("member")
@click.argument("jwk_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@config_option
def consortium_trust(member: str, jwk_file: Path, config: Path | None) -> None:
    """Check MEMBER's reports with the key in JWK_FILE (what `yilian consortium key` printed
    there)."""
    from records import store
    from records.audit_log import Event
    from security.principal import SYSTEM
    from teleconsult import directory

    ctx = _context(config)
    try:
        with ctx.engine.begin() as conn:
            organization = _member(conn, member)
            body = store.read(conn, "Organization", organization).json()
            try:
                body = directory.with_trusted_key(body, json.loads(jwk_file.read_text()))
            except (ValueError, KeyError) as exc:
                raise click.ClickException(f"{jwk_file}: not a report-signing key: {exc}") from None
            store.write(conn, "Organization", organization, body, "PUT")
        ctx.records.audit(SYSTEM, Event("consortium-trust", (f"Organization/{organization}",)))
    finally:
        ctx.close()
    click.echo(f"{member}: reports are now checked with this key too")


@click.group("outbox")
def outbox_group() -> None:
    """Deliveries to other members: list, read, send again."""


@outbox_group.command("list")
@click.option("--status", type=click.Choice(["pending", "delivered", "dead", "cancelled"]))
@click.option("--limit", default=50, show_default=True)
@config_option
def outbox_list(status: str | None, limit: int, config: Path | None) -> None:
    """Outbox rows, newest first."""
    from records import outbox

    ctx = _context(config)
    try:
        rows = outbox.listing(ctx.engine, status=status, limit=limit)
        depth = outbox.depth(ctx.engine)
    finally:
        ctx.close()
    counts = ", ".join(f"{s} {n}" for s, n in depth.by_status.items())
    click.echo(f"{counts}; oldest waiting {depth.oldest_age():.0f} s")
    for r in rows:
        click.echo(
            f"{r.id}  {r.created:%Y-%m-%d %H:%M:%S}  {r.status:<9} {r.channel:<5} "
            f"{r.topic:<8} {r.destination:<20} tries {r.attempts:>3}  {(r.last_error or '')[:70]}"
        )


@outbox_group.command("show")
@click.argument("entry_id")
@config_option
def outbox_show(entry_id: str, config: Path | None) -> None:
    """One row: where it goes, what it carries (ids, no patient data), why it failed."""
    from records import outbox

    ctx = _context(config)
    try:
        row = outbox.get(ctx.engine, entry_id)
    finally:
        ctx.close()
    if row is None:
        raise click.ClickException(f"no outbox row {entry_id}")
    for label, value in (
        ("id", row.id),
        ("status", row.status),
        ("destination", f"Endpoint/{row.destination}"),
        ("channel", row.channel),
        ("topic", row.topic),
        ("request", f"Task/{row.subject}" if row.subject else None),
        ("payload", json.dumps(row.payload, ensure_ascii=False)),
        ("created", row.created.isoformat(timespec="seconds")),
        ("attempts", row.attempts),
        ("next attempt", row.next_attempt.isoformat(timespec="seconds")),
        ("delivered", row.delivered.isoformat(timespec="seconds") if row.delivered else None),
        ("leased by", row.leased_by),
        ("last error", row.last_error),
    ):
        click.echo(f"{label:<13}{value if value is not None else '-'}")


@outbox_group.command("requeue")
@click.argument("entry_id")
@config_option
def outbox_requeue(entry_id: str, config: Path | None) -> None:
    """Send a dead (or cancelled) row again, from its first attempt."""
    from records import outbox
    from records.audit_log import Event
    from security.principal import SYSTEM

    ctx = _context(config)
    try:
        row = outbox.requeue(ctx.engine, entry_id)
        if row is not None:
            ctx.records.audit(SYSTEM, Event("outbox-requeue", (f"Outbox/{entry_id}",)))
    finally:
        ctx.close()
    if row is None:
        raise click.ClickException(f"{entry_id} is not a dead or cancelled outbox row")
    click.echo(f"{entry_id}: pending again (to {row.destination})")
