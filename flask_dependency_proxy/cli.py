"""``flask dependency-proxy ...``: operator commands."""

from __future__ import annotations

import contextlib
import typing as t

import click
from flask.cli import AppGroup

from ._state import state

if t.TYPE_CHECKING:
    from .migrations import Upgrade

cli = AppGroup("dependency-proxy", help="Manage the container image dependency proxy.")


def _group_id(full_path: str) -> int:
    group = state(None).host.find_group(full_path.strip("/").lower())
    if group is None:
        raise click.ClickException(f"No group with full path {full_path!r}.")
    return group.id


@cli.command("init-db")
def init_db() -> None:
    """Create the extension's tables in the host's database, or bring them to the newest
    revision (safe to repeat; the same as ``db upgrade``)."""
    with _migration_errors():
        _echo_upgrade(state(None).metadata.create_all())


# -- schema migrations -----------------------------------------------------------------------

db_cli = AppGroup(
    "db",
    help="Migrate the extension's tables (apart from the host's own migrations: run these"
    " after them, e.g. after `flask db upgrade`).",
)
cli.add_command(db_cli)


@contextlib.contextmanager
def _migration_errors() -> t.Iterator[None]:
    from alembic.util import CommandError

    from .migrations import MigrationError

    try:
        yield
    except (CommandError, MigrationError) as exc:
        raise click.ClickException(str(exc)) from None


def _echo_upgrade(result: Upgrade) -> None:
    if result.adopted is not None:
        click.echo(
            "Found the dependency proxy's tables made before migrations existed;"
            f" recorded them at revision {result.adopted}."
        )
    if result.before == result.after:
        click.echo(f"Dependency proxy tables are at revision {result.after}: nothing to do.")
    else:
        start = result.before or "an empty database"
        click.echo(f"Dependency proxy tables upgraded from {start} to revision {result.after}.")


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Upgrade the extension's tables to REVISION (default: the newest).

    Also takes over tables made by an ``init-db`` older than migrations.
    """
    from .migrations import upgrade

    with _migration_errors():
        _echo_upgrade(upgrade(revision))


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Take the extension's tables back to REVISION (``base`` drops them all)."""
    from .migrations import downgrade

    with _migration_errors():
        now = downgrade(revision)
    click.echo(f"Dependency proxy tables downgraded to revision {now or 'base (no tables)'}.")


@db_cli.command("current")
def db_current() -> None:
    """Print the revision the database records for the extension's tables."""
    from .migrations import current, has_unversioned_tables, head

    revision = current()
    if revision is not None:
        click.echo(f"{revision} (head)" if revision == head() else revision)
    elif has_unversioned_tables():
        click.echo(
            "none: the tables were made before migrations existed;"
            " run `flask dependency-proxy db upgrade`."
        )
    else:
        click.echo("none")


@db_cli.command("stamp")
@click.argument("revision")
def db_stamp(revision: str) -> None:
    """Record REVISION as the database's without changing any table."""
    from .migrations import stamp

    with _migration_errors():
        now = stamp(revision)
    click.echo(f"Dependency proxy tables recorded at revision {now or 'base'}.")


@db_cli.command("check")
def db_check() -> None:
    """Exit with status 1 when the extension's tables differ from its models."""
    from .migrations import differences

    found = differences()
    if not found:
        click.echo("Dependency proxy tables match the models.")
        return
    for difference in found:
        click.echo(f"differs: {difference}")
    raise click.ClickException(
        "The dependency proxy's tables differ from its models:"
        " run `flask dependency-proxy db upgrade`."
    )


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
    files, size = proxy.store.usage()
    click.echo(f"Blobs in {proxy.store.describe()}: {files}, {human_size(size)}.")


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


# -- per-group upstream credentials --------------------------------------------------------


@cli.command("rotate-credentials")
def rotate_credentials() -> None:
    """Re-encrypt every group's upstream credentials with the newest key.

    Put a new key first in ``DEPENDENCY_PROXY_CREDENTIAL_KEYS`` (keep the old ones after
    it), run this, then drop the old keys. Credentials no configured key decrypts are
    named (group and upstream) and left as they are; the command then fails.
    """
    from .models.upstreams import GroupUpstreamRecords

    result = GroupUpstreamRecords.for_app().rotate_all()
    click.echo(f"Re-encrypted {result.rotated} group upstream credentials with the newest key.")
    if result.unreadable:
        proxy = state(None)
        for group_id, upstream in result.unreadable:
            group = proxy.host.find_group_by_id(group_id)
            label = group.full_path if group is not None else f"group {group_id}"
            click.echo(f"cannot decrypt: {label}, upstream {upstream!r}")
        raise click.ClickException(
            f"{len(result.unreadable)} credentials cannot be decrypted with the configured keys;"
            " their owners must set them again (or add the key they were encrypted with)."
        )
