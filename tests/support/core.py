"""The cache's core built in the test process, without the web layer: a real
:class:`~flask_dependency_proxy.cache.pull_through.PullThroughCache`, its real
:class:`~flask_dependency_proxy.fetch.fetcher.BlobFetcher` and
:class:`~flask_dependency_proxy.models.repository.CacheMetadata` on a SQLite file, an
in-memory blob store and fake upstream clients.

``CacheMetadata`` works through the host's session (a Flask-SQLAlchemy one here, bound
by :class:`~flask_dependency_proxy.models.binding.DatabaseBinding`), so a bare Flask app
carries it (no blueprint, no host adapter, no extension): the smallest real setup of the
models.
The tables come from the extension's own migrations, run once into a template file
(:func:`migrated_database`) that each test copies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import time
import typing as t
from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_dependency_proxy.admin.lifecycle import Lifecycle
from flask_dependency_proxy.cache.blocks import BlockList
from flask_dependency_proxy.cache.cooldown import CooldownPolicy, Cooldowns
from flask_dependency_proxy.cache.manifests import DeletedTags
from flask_dependency_proxy.cache.pull_through import PullThroughCache
from flask_dependency_proxy.cache.quota import QuotaPolicy, Quotas
from flask_dependency_proxy.cache.results import BlobResult
from flask_dependency_proxy.fetch.fetcher import BlobFetcher
from flask_dependency_proxy.migrations import upgrade
from flask_dependency_proxy.models.binding import DatabaseBinding
from flask_dependency_proxy.models.blocks import BlockRecords
from flask_dependency_proxy.models.cleanup import CleanupRecords
from flask_dependency_proxy.models.cooldowns import TagHoldRecords
from flask_dependency_proxy.models.group_settings import GroupSettingsRecords
from flask_dependency_proxy.models.quota import QuotaRecords
from flask_dependency_proxy.models.repository import CacheMetadata
from flask_dependency_proxy.models.tables import utcnow
from flask_dependency_proxy.stores.base import ByteStream, Following
from flask_dependency_proxy.upstream.routing import InstanceOrder

from .fakeupstream import FakeRegistry, upstream_set
from .memorystore import MemoryStore


class Clock:
    """Naive UTC now, moved forward by the test (the cache's, the life cycle's and the
    store's clock). It runs with real time, as the database's own time stamps do
    (:class:`CacheMetadata` writes ``checked_at`` with the real time)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return utcnow() + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += dt.timedelta(**delta)

    def epoch(self) -> float:
        """Now in seconds since the epoch (the store's commit times)."""
        return self().replace(tzinfo=dt.UTC).timestamp()


def _app(database: Path) -> tuple[Flask, SQLAlchemy]:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{database}"
    db = SQLAlchemy()
    db.init_app(app)
    return app, db


def migrated_database(path: Path) -> Path:
    """An SQLite file with the extension's tables, built by its migrations."""
    app, db = _app(path)
    with app.app_context():
        upgrade(engine=db.engine)
        db.engine.dispose()
    return path


@dataclasses.dataclass
class Core:
    """The parts of one core, and the app context its database calls run in."""

    app: Flask
    db: SQLAlchemy
    metadata: CacheMetadata
    store: MemoryStore
    registries: dict[str, FakeRegistry]
    fetcher: BlobFetcher
    cache: PullThroughCache
    clock: Clock

    @property
    def upstream(self) -> FakeRegistry:
        """The first (default) upstream."""
        return next(iter(self.registries.values()))

    def lifecycle(
        self,
        *,
        file_grace_seconds: float = 60,
        purge_cooldown_seconds: float = 0,
        batch_size: int = 100,
    ) -> Lifecycle:
        """The life cycle over this core's database and store, on its clock."""
        return Lifecycle(
            self.cleanup_records(),
            self.store,
            purge_cooldown_seconds=purge_cooldown_seconds,
            batch_size=batch_size,
            file_grace_seconds=file_grace_seconds,
            clock=self.clock,
        )

    def group_settings(self) -> GroupSettingsRecords:
        """The groups' settings, groups on by default."""
        return GroupSettingsRecords(lambda: self.metadata.session, default_enabled=True)

    def cleanup_records(self) -> CleanupRecords:
        return CleanupRecords(lambda: self.metadata.session, self.group_settings())

    def quota_records(self) -> QuotaRecords:
        return QuotaRecords(lambda: self.metadata.session)

    def set_limit(self, group_id: int, limit: int | None) -> None:
        self.group_settings().update(group_id, utcnow(), size_limit=limit)
        self.metadata.release()

    def settle(self, timeout: float = 5.0) -> None:
        """Wait for the fetches in flight to end, their blobs recorded."""
        deadline = time.monotonic() + timeout
        while self.fetcher.in_flight():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.fetcher.in_flight()} fetches still running")
            time.sleep(0.001)

    def close(self) -> None:
        self.settle()
        self.metadata.release()
        self.db.engine.dispose()


def build_core(
    directory: Path,
    template: Path,
    *,
    registries: t.Sequence[FakeRegistry] = (),
    tag_check_interval: float = 0,
    serve_stale_on_not_found: bool = False,
    max_blob_size: int = 0,
    quota_policy: QuotaPolicy = QuotaPolicy.EVICT,
    block_refresh_seconds: float | None = None,
    deleted_tags: t.Callable[[CacheMetadata], DeletedTags] | None = None,
    cooldown: CooldownPolicy | None = None,
    cooldown_refresh_seconds: float = 0,
) -> Core:
    """A core on a copy of ``template`` (see :func:`migrated_database`); call inside
    ``core.app.app_context()``.

    :param cooldown: the instance's tag cooldown; the groups' own values are read again
        after ``cooldown_refresh_seconds`` (every pull by default). ``None``: no cooldown.
    """
    database = directory / "cache.sqlite"
    shutil.copyfile(template, database)
    app, db = _app(database)
    clock = Clock()
    store = MemoryStore(str(directory / "local"), clock=clock.epoch)
    registries = tuple(registries) or (FakeRegistry(),)
    binding = DatabaseBinding.from_arguments(app, db=db)
    metadata = CacheMetadata(binding, read_granularity_seconds=0)
    fetcher = BlobFetcher(store, start_timeout=5, max_blob_size=max_blob_size)
    blocks = None
    if block_refresh_seconds is not None:
        blocks = BlockList(
            BlockRecords(lambda: metadata.session).active_rules,
            metadata.database,
            refresh_seconds=block_refresh_seconds,
        )
    cooldowns = None
    if cooldown is not None:
        settings = GroupSettingsRecords(lambda: metadata.session, default_enabled=True)
        cooldowns = Cooldowns(
            settings.cooldown_rows,
            TagHoldRecords(lambda: metadata.session),
            metadata.database,
            default=cooldown,
            refresh_seconds=cooldown_refresh_seconds,
        )
    cache = PullThroughCache(
        store=store,
        upstreams=upstream_set(*registries),
        group_upstreams=InstanceOrder(),
        metadata=metadata,
        fetcher=fetcher,
        quotas=Quotas(
            QuotaRecords(lambda: metadata.session),
            policy=quota_policy,
            max_blob_size=max_blob_size,
            flush_reads=lambda: metadata.flush_reads(force=True),
        ),
        tag_check_interval=tag_check_interval,
        serve_stale_on_not_found=serve_stale_on_not_found,
        clock=clock,
        blocks=blocks,
        deleted_tags=None if deleted_tags is None else deleted_tags(metadata),
        cooldowns=cooldowns,
    )
    return Core(
        app=app,
        db=db,
        metadata=metadata,
        store=store,
        registries={registry.name: registry for registry in registries},
        fetcher=fetcher,
        cache=cache,
        clock=clock,
    )


def received(result: BlobResult) -> bytes:
    """What a client of a blob answer receives: a fetch it follows, or the stored blob."""
    match result.location:
        case Following(chunks=chunks):
            return b"".join(chunks)
        case ByteStream(open=open_blob):
            return b"".join(open_blob())
    raise AssertionError(f"not a blob the core streams: {result.location!r}")
