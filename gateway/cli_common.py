"""What every `yilian` command shares: the --config option and the context it builds."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.settings import Settings, load_settings


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def _context(config: Path | None):  # type: ignore[no-untyped-def]
    from gateway.context import Context

    return Context.build(_settings(config))


config_option = click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML settings file; YILIAN_* environment variables win over it.",
)
