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


# -- pages, REST API and cache life cycle --------------------------------------------------


@cli.command("cleanup")
def cleanup() -> None:
    """Apply cleanup policies, then delete what is scheduled for deletion.

    Deletes marked rows in batches, then blob files no group references any more.
    Safe to run while pulls are served, and to repeat; run it from cron, e.g. hourly:
    ``17 * * * * cd /srv/app && flask --app app dependency-proxy cleanup``.
    """
    from .lifecycle import CleanupBusy, Lifecycle

    try:
        report = Lifecycle.for_app().cleanup()
    except CleanupBusy as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.summary())


@cli.command("stats")
@click.argument("full_path", required=False)
def stats(full_path: str | None) -> None:
    """Print counts and sizes of one group's cache, or of every group's."""
    from .models.admin import CacheAdmin, GroupStats, human_size
    from .storage import BlobFiles

    proxy = state(None)
    admin = CacheAdmin(lambda: proxy.metadata.session)

    def line(label: str, numbers: GroupStats) -> str:
        text = (
            f"{label}: {numbers.images} images, {numbers.manifests.count} manifests,"
            f" {numbers.blobs.count} blobs, {human_size(numbers.size)}"
        )
        if numbers.pending:
            pending = numbers.pending_manifests.size + numbers.pending_blobs.size
            text += (
                f"; scheduled for deletion: {numbers.pending_manifests.count} manifests,"
                f" {numbers.pending_blobs.count} blobs, {human_size(pending)}"
            )
        return text

    if full_path is not None:
        group_id = _group_id(full_path)
        click.echo(line(full_path.strip("/").lower(), admin.stats(group_id)))
        return
    every = admin.all_stats()
    for group_id, numbers in every.items():
        group = proxy.host.find_group_by_id(group_id)
        label = group.full_path if group is not None else f"(group {group_id}, not found)"
        click.echo(line(label, numbers))
    if not every:
        click.echo("No group has anything cached.")
    files, size = BlobFiles(proxy.store).usage()
    click.echo(f"Blob files in {proxy.store.root}: {files}, {human_size(size)}.")


@cli.command("purge")
@click.argument("full_path")
@click.option("--force", is_flag=True, help="Ignore the cooldown between two purges.")
def purge(full_path: str, force: bool) -> None:
    """Schedule a group's whole cache for deletion (as the page's "Clear cache")."""
    from .lifecycle import Lifecycle, PurgeTooSoon

    group_id = _group_id(full_path)
    try:
        result = Lifecycle.for_app().purge(group_id, force=force)
    except PurgeTooSoon as exc:
        raise click.ClickException(f"Not purged: {exc} (or pass --force).") from None
    click.echo(
        f"Scheduled {result.manifests} manifests and {result.blobs} blobs of {full_path}"
        " for deletion; `flask dependency-proxy cleanup` deletes them."
    )
