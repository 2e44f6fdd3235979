"""``flask dependency-proxy ...``: operator commands.

Every command runs in the extension's context outside requests: an app context and,
within it, the host's ``outside_request`` context manager (see
:mod:`~flask_dependency_proxy.models.binding`), so a host whose session exists only
within its requests has one for the adapter calls and the extension's own queries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import typing as t

import click
from flask.cli import AppGroup

from ._state import state

if t.TYPE_CHECKING:
    import sqlalchemy as sa

    from .admin.groups import GroupAdmin
    from .cache.warm import Outcome, Plan
    from .migrations import Upgrade

_F = t.TypeVar("_F", bound=t.Callable[..., t.Any])


def _outside_request(callback: _F) -> _F:
    """Run a command's callback in the extension's context outside requests."""

    @functools.wraps(callback)
    def run(*args: t.Any, **kwargs: t.Any) -> t.Any:
        with state(None).binding.outside_request():
            return callback(*args, **kwargs)

    return t.cast(_F, run)


class ProxyCommands(AppGroup):
    """An ``AppGroup`` whose commands (and those of its subgroups) run in the host's
    ``outside_request`` context, inside the app context Flask's CLI pushes."""

    def command(  # type: ignore[override]
        self, *args: t.Any, **kwargs: t.Any
    ) -> t.Callable[[t.Callable[..., t.Any]], t.Any]:
        register = super().command(*args, **kwargs)

        def decorator(callback: t.Callable[..., t.Any]) -> t.Any:
            return register(_outside_request(callback))

        return decorator

    def group(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        kwargs.setdefault("cls", ProxyCommands)
        return super().group(*args, **kwargs)


cli = ProxyCommands("dependency-proxy", help="Manage the container image dependency proxy.")


def _group_id(full_path: str) -> int:
    group = state(None).host.find_group(full_path.strip("/").lower())
    if group is None:
        raise click.ClickException(f"No group with full path {full_path!r}.")
    return group.id


@cli.command("init-db")
def init_db() -> None:
    """Create the extension's tables in the host's database, or bring them to the newest
    revision (safe to repeat; the same as ``db upgrade``)."""
    from .migrations import upgrade

    with _migration_errors():
        _echo_upgrade(upgrade(engine=_engine()))


# -- schema migrations -----------------------------------------------------------------------

db_cli = ProxyCommands(
    "db",
    help="Migrate the extension's tables (apart from the host's own migrations: run these"
    " after them, e.g. after `flask db upgrade`).",
)
cli.add_command(db_cli)


def _engine() -> sa.Engine:
    """The host's engine, which holds the extension's tables."""
    return state(None).binding.engine


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
        _echo_upgrade(upgrade(revision, engine=_engine()))


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Take the extension's tables back to REVISION (``base`` drops them all)."""
    from .migrations import downgrade

    with _migration_errors():
        now = downgrade(revision, engine=_engine())
    click.echo(f"Dependency proxy tables downgraded to revision {now or 'base (no tables)'}.")


@db_cli.command("current")
def db_current() -> None:
    """Print the revision the database records for the extension's tables."""
    from .migrations import current, has_unversioned_tables, head

    revision = current(engine=_engine())
    if revision is not None:
        click.echo(f"{revision} (head)" if revision == head() else revision)
    elif has_unversioned_tables(engine=_engine()):
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
        now = stamp(revision, engine=_engine())
    click.echo(f"Dependency proxy tables recorded at revision {now or 'base'}.")


@db_cli.command("check")
def db_check() -> None:
    """Exit with status 1 when the extension's tables differ from its models."""
    from .migrations import differences

    found = differences(engine=_engine())
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
    state(None).group_admin.set_enabled(_group_id(full_path), True)
    click.echo(f"Dependency proxy enabled for {full_path}.")


@cli.command("disable")
@click.argument("full_path")
def disable(full_path: str) -> None:
    """Switch the proxy off for a group (its cache is kept)."""
    state(None).group_admin.set_enabled(_group_id(full_path), False)
    click.echo(f"Dependency proxy disabled for {full_path}.")


# -- pages, REST API and cache life cycle --------------------------------------------------


@cli.command("cleanup")
def cleanup() -> None:
    """Apply cleanup policies, then delete what is scheduled for deletion.

    Deletes marked rows in batches, then blob files no group references any more.
    Safe to run while pulls are served, and to repeat; run it from cron, e.g. hourly:
    ``17 * * * * cd /srv/app && flask --app app dependency-proxy cleanup``.
    """
    from .admin.lifecycle import CleanupBusy

    try:
        report = state(None).lifecycle.cleanup()
    except CleanupBusy as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.summary())


@cli.command("stats")
@click.argument("full_path", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
def stats(full_path: str | None, as_json: bool) -> None:
    """Print counts and sizes of one group's cache, or of every group's."""
    from .models.stats import GroupStats, human_size

    proxy = state(None)
    admin = proxy.group_admin
    if as_json:
        click.echo(json.dumps(_stats_document(admin, full_path), indent=2))
        return

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
    store = admin.store_usage()
    click.echo(f"Blobs in {store.location}: {store.blobs}, {human_size(store.size)}.")


def _stats_document(admin: GroupAdmin, full_path: str | None) -> dict[str, t.Any]:
    """``stats --json``: every group's (or one group's) figures and the store's."""
    proxy = state(None)
    if full_path is not None:
        group_id = _group_id(full_path)
        every = {group_id: admin.stats(group_id)}
    else:
        every = admin.all_stats()
    groups = []
    for group_id, numbers in every.items():
        group = proxy.host.find_group_by_id(group_id)
        usage = {
            kind: dataclasses.asdict(getattr(numbers, kind))
            for kind in ("manifests", "blobs", "pending_manifests", "pending_blobs")
        }
        groups.append(
            {
                "id": group_id,
                "full_path": group.full_path if group is not None else None,
                "images": numbers.images,
                "size": numbers.size,
                **usage,
            }
        )
    document: dict[str, t.Any] = {"groups": groups}
    if full_path is None:
        store = admin.store_usage()
        document["store"] = {"location": store.location, "blobs": store.blobs, "size": store.size}
    return document


@cli.command("warm")
@click.argument("full_path")
@click.argument("images", nargs=-1)
@click.option(
    "--from-file",
    type=click.File("r"),
    help="Read more images from this file, one per line (blank lines and # comments skipped).",
)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="Warm only this platform of a multi-platform image (repeatable). Default: every one.",
)
def warm(
    full_path: str, images: tuple[str, ...], from_file: t.TextIO | None, platforms: tuple[str, ...]
) -> None:
    """Fetch IMAGES (IMAGE[:TAG|@DIGEST]) into the cache of the group FULL_PATH ahead of
    a CI rush, the way a pull of each would, with one upstream GET per blob however many
    pulls ask for it meanwhile. Exits non-zero, naming them, when some could not be warmed.
    """
    from .admin.groups import ProxyDisabled
    from .cache.warm import WarmError, parse_platform, parse_target

    texts = list(images)
    if from_file is not None:
        texts += [line.split("#", 1)[0].strip() for line in from_file]
    texts = [text for text in texts if text]
    if not texts:
        raise click.UsageError("Name at least one image, or give --from-file.")
    try:
        targets = [parse_target(text) for text in texts]
        wanted = [parse_platform(text) for text in platforms]
    except WarmError as exc:
        raise click.BadParameter(str(exc)) from None
    group_id = _group_id(full_path)
    try:
        with _TerminalProgress() as progress:
            outcomes = state(None).group_admin.warm(
                group_id, full_path.strip("/").lower(), targets, progress, platforms=wanted
            )
    except ProxyDisabled:
        raise click.ClickException(
            f"The dependency proxy is off for {full_path}: enable it first"
            f" (flask dependency-proxy enable {full_path})."
        ) from None
    failed = [outcome for outcome in outcomes if outcome.error]
    fetched = sum(outcome.fetched_bytes for outcome in outcomes)
    click.echo(
        f"Warmed {len(outcomes) - len(failed)} of {len(outcomes)} images into {full_path};"
        f" {_human_size(fetched)} fetched upstream."
    )
    if failed:
        names = "; ".join(f"{outcome.target.label} ({outcome.error})" for outcome in failed)
        raise click.ClickException(f"Not warmed: {names}")


class _TerminalProgress:
    """Warm-up progress on the terminal: a bar per image and one overall, each with
    bytes, rate and time left, and a line per image when it is done. Without a
    terminal (a CI log) only the lines are written."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = Console(highlight=False)
        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self._console = console
        self._overall = self._bars.add_task("overall", total=0)
        self._tasks: dict[int, t.Any] = {}

    def __enter__(self) -> _TerminalProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bars.stop()

    def planned(self, plan: Plan) -> None:
        self._tasks[id(plan)] = self._bars.add_task(plan.target.label, total=plan.size)
        overall = self._bars.tasks[self._overall]
        self._bars.update(self._overall, total=(overall.total or 0) + plan.size)

    def advance(self, plan: Plan, nbytes: int) -> None:
        self._bars.advance(self._tasks[id(plan)], nbytes)
        self._bars.advance(self._overall, nbytes)

    def finished(self, outcome: Outcome) -> None:
        label = outcome.target.label
        if outcome.platforms:
            label += f" ({', '.join(outcome.platforms)})"
        if outcome.error:
            line = f"{label}: failed: {outcome.error}"
        else:
            line = (
                f"{label}: {outcome.fetched} blobs fetched ({_human_size(outcome.fetched_bytes)}),"
                f" {outcome.cached} already cached"
            )
        self._console.print(line, markup=False, soft_wrap=True)


def _human_size(size: int) -> str:
    from .models.stats import human_size

    return human_size(size)


@cli.command("purge")
@click.argument("full_path")
@click.option("--force", is_flag=True, help="Ignore the cooldown between two purges.")
def purge(full_path: str, force: bool) -> None:
    """Schedule a group's whole cache for deletion (as the page's "Clear cache")."""
    from .admin.lifecycle import PurgeTooSoon

    group_id = _group_id(full_path)
    try:
        result = state(None).group_admin.purge(group_id, force=force)
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
    result = state(None).group_admin.rotate_credentials()
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
