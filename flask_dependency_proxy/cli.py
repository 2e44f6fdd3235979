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


def _group_id(full_path: str, *, claim: bool = False) -> int:
    """The id of the group at ``full_path``, checked against the path recorded for it
    (see :mod:`.auth.group_paths`; ``claim``: about to change its settings)."""
    from .auth.group_paths import GroupPathProblem

    group = state(None).host.find_group(full_path.strip("/").lower())
    if group is None:
        raise click.ClickException(f"No group with full path {full_path!r}.")
    try:
        state(None).group_admin.admit(group, claim=claim)
    except GroupPathProblem as problem:
        raise click.ClickException(f"Refused: {problem}.") from None
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
    state(None).group_admin.set_enabled(_group_id(full_path, claim=True), True)
    click.echo(f"Dependency proxy enabled for {full_path}.")


@cli.command("disable")
@click.argument("full_path")
def disable(full_path: str) -> None:
    """Switch the proxy off for a group (its cache is kept)."""
    state(None).group_admin.set_enabled(_group_id(full_path, claim=True), False)
    click.echo(f"Dependency proxy disabled for {full_path}.")


@cli.command("forget-group")
@click.argument("group_id", type=click.IntRange(min=0))
def forget_group(group_id: int) -> None:
    """Forget the group GROUP_ID, which the host deleted (or whose id it gives to a new
    group): every row the extension keeps for it (cache, settings, size limit, upstream
    credentials, usage, recorded path, blocks, pull record, signature policy, tags in
    cooldown) is deleted; blob files no other group uses go with the next cleanup. What a
    host runs, or calls ``proxy.forget_group(id)`` for, when it deletes a group."""
    forgotten = state(None).group_admin.forget_group(group_id)
    click.echo(
        f"Forgot group {group_id}: its settings, credentials, usage,"
        f" {forgotten.manifests} cached manifests and {forgotten.blobs} blobs are deleted;"
        " blob files no other group uses go with the next `flask dependency-proxy cleanup`."
    )


@cli.command("confirm-group")
@click.argument("group_id", type=click.IntRange(min=0))
def confirm_group(group_id: int) -> None:
    """Confirm that the group GROUP_ID is the group the proxy knew, renamed: record its
    current path, so it is served again with its settings and cache."""
    from .admin.groups import GroupNotFound
    from .auth.group_paths import GroupPathTaken

    try:
        previous, current = state(None).group_admin.confirm_group(group_id)
    except (GroupNotFound, GroupPathTaken) as exc:
        raise click.ClickException(f"Not confirmed: {exc}.") from None
    if previous is None or previous == current:
        click.echo(f"Group {group_id} is recorded with the path {current!r}.")
    else:
        click.echo(f"Group {group_id} renamed from {previous!r} to {current!r}.")


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


@cli.command("refresh")
@click.argument("full_path", required=False)
@click.option(
    "--all", "check_all", is_flag=True, help="Check every hot tag now, whatever its interval."
)
def refresh(full_path: str | None, check_all: bool) -> None:
    """Re-check the hot tags of every group whose predictive refresh is on (or of the
    group FULL_PATH, on or not) upstream, and fetch ahead what moved. One run across
    the fleet at a time; run it from cron where the web processes do not
    (``DEPENDENCY_PROXY_REFRESH_SCHEDULER``).
    """
    from .cache.refresh import RefreshBusy

    refresher = state(None).refresher
    assert refresher is not None
    group_id = None if full_path is None else _group_id(full_path, claim=False)
    try:
        report = refresher.run(force=check_all or group_id is not None, group_id=group_id)
    except RefreshBusy as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.summary())
    if report.requests:
        spent = ", ".join(f"{name}: {count}" for name, count in sorted(report.requests.items()))
        click.echo(f"Upstream requests: {spent}.")


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
    group_id = _group_id(full_path, claim=True)
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


# -- supply-chain controls -----------------------------------------------------------------


def _group_label(group_id: int | None) -> str:
    if group_id is None:
        return "every group"
    group = state(None).host.find_group_by_id(group_id)
    return group.full_path if group is not None else f"group {group_id}"


def _document(record: t.Any) -> dict[str, t.Any]:
    """A record's fields for ``--json``: times as ISO 8601 UTC."""
    import datetime as dt

    return {
        key: f"{value.isoformat(timespec='seconds')}Z" if isinstance(value, dt.datetime) else value
        for key, value in dataclasses.asdict(record).items()
    }


@cli.command("block")
@click.argument("target")
@click.option("--reason", required=True, help="Why: shown to every client the block refuses.")
@click.option("--group", "full_path", help="Block in this group only (default: every group).")
@click.option("--by", default="instance administrator", show_default=True, help="Recorded.")
def block(target: str, reason: str, full_path: str | None, by: str) -> None:
    """Block TARGET: a manifest digest (``sha256:...``; an index blocks its platform
    manifests too) or ``IMAGE:TAG_PATTERN`` (``bitnami/redis:7.*``), for every group or
    one. Prints who pulled it in the last 30 days."""
    from .admin.supply_chain import InvalidBlock

    group_id = _group_id(full_path) if full_path else None
    fields: dict[str, str] = {}
    if target.startswith(("sha256:", "sha512:")):
        fields["digest"] = target
    else:
        image, _, pattern = target.rpartition(":")
        fields.update(image=image or target, tag_pattern=pattern if image else "")
    try:
        created = state(None).supply_chain.block(group_id, reason=reason, by=by, **fields)
    except InvalidBlock as exc:
        raise click.BadParameter(str(exc)) from None
    pulled = created.pulled
    click.echo(
        f"Blocked {created.block.target} for {_group_label(group_id)} (block {created.block.id})."
    )
    projects = f"; latest projects: {', '.join(pulled.projects)}" if pulled.projects else ""
    click.echo(f"Pulled {pulled.count} times in the last 30 days{projects}.")


@cli.command("unblock")
@click.argument("block_id", type=int)
@click.option("--by", default="instance administrator", show_default=True, help="Recorded.")
def unblock(block_id: int, by: str) -> None:
    """Lift block BLOCK_ID (the lifting is recorded)."""
    lifted = state(None).supply_chain.unblock(block_id, None, by=by)
    if lifted is None:
        raise click.ClickException(f"No active block {block_id}.")
    click.echo(f"Unblocked {lifted.target} for {_group_label(lifted.group_id)}.")


@cli.command("blocks")
@click.option("--all", "removed", is_flag=True, help="Lifted blocks too.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
def blocks(removed: bool, as_json: bool) -> None:
    """List the blocks of every group."""
    listed = state(None).supply_chain.blocks(None, removed=removed)
    if as_json:
        click.echo(
            json.dumps(
                [{**_document(b), "group": _group_label(b.group_id)} for b in listed], indent=2
            )
        )
        return
    for item in listed:
        state_text = (
            "active"
            if item.active
            else f"lifted {item.removed_at:%Y-%m-%d %H:%M} by {item.removed_by}"
        )
        click.echo(
            f"{item.id}\t{item.target}\t{_group_label(item.group_id)}\t{state_text}\t{item.reason}"
        )
    if not listed:
        click.echo("No blocks.")


@cli.command("pulls")
@click.option("--digest", help="Pulls of this manifest digest.")
@click.option("--image", help="Pulls of this image name.")
@click.option("--project", help="Pulls by this project (the host's job context).")
@click.option("--group", "full_path", help="Pulls through this group only.")
@click.option(
    "--since", type=click.DateTime(), help="Pulls from this UTC time on (e.g. 2026-03-01)."
)
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
def pulls(
    digest: str | None,
    image: str | None,
    project: str | None,
    full_path: str | None,
    since: t.Any,
    limit: int,
    as_json: bool,
) -> None:
    """Who pulled what, across every group (newest first): the question on the day a
    digest turns out to be compromised."""
    from .models.pulls import PullFilter
    from .oci.reference import is_valid_digest

    if digest is not None and not is_valid_digest(digest):
        raise click.BadParameter("must be sha256:<64 hex digits>", param_hint="--digest")
    where = PullFilter(
        group_id=_group_id(full_path) if full_path else None,
        digest=digest,
        image=image,
        project=project,
        since=since,
    )
    found = state(None).supply_chain.pulls(where, 1, limit)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "total": found.total,
                    "pulls": [
                        {**_document(e), "group": _group_label(e.group_id)} for e in found.items
                    ],
                },
                indent=2,
            )
        )
        return
    for entry in found.items:
        context = " ".join(f"{k}={v}" for k, v in sorted((entry.context or {}).items()))
        click.echo(
            f"{entry.pulled_at:%Y-%m-%d %H:%M:%S}\t{_group_label(entry.group_id)}\t"
            f"{entry.image}:{entry.reference}\t{entry.digest or '-'}\t{entry.outcome}\t"
            f"{entry.principal_kind}:{entry.username}\t{context}"
        )
    click.echo(
        f"{found.total} pulls"
        + (f" (showing {len(found.items)})" if found.total > len(found.items) else "")
        + "."
    )
