"""``flask dependency-proxy ...``: operator commands."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from .extension import state

cli = AppGroup("dependency-proxy", help="Manage the container image dependency proxy.")


def _group_id(full_path: str) -> int:
    group = state(None).host.find_group(full_path.strip("/").lower())
    if group is None:
        raise click.ClickException(f"No group with full path {full_path!r}.")
    return group.id


@cli.command("init-db")
def init_db() -> None:
    """Create the extension's tables in the host's database."""
    state(None).metadata.create_all()
    click.echo("Dependency proxy tables are ready.")


@cli.command("enable")
@click.argument("full_path")
def enable(full_path: str) -> None:
    """Switch the proxy on for a group."""
    proxy = state(None)
    proxy.metadata.set_group_enabled(_group_id(full_path), True)
    proxy.access.forget()
    click.echo(f"Dependency proxy enabled for {full_path}.")


@cli.command("disable")
@click.argument("full_path")
def disable(full_path: str) -> None:
    """Switch the proxy off for a group (its cache is kept)."""
    proxy = state(None)
    proxy.metadata.set_group_enabled(_group_id(full_path), False)
    proxy.access.forget()
    click.echo(f"Dependency proxy disabled for {full_path}.")
