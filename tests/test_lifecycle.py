"""The cache life cycle: purge, cleanup policy, deletion of rows and blob files.

Runs on SQLite and PostgreSQL (``app_factory``) with a clock each test controls. The
races with pulls run the real pull-through cache against a real upstream registry and
hook the moment between a file's commit and its row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa

from flask_dependency_proxy import state
from flask_dependency_proxy.admin.lifecycle import (
    CLEANUP_LEASE,
    CleanupBusy,
    CleanupReport,
    Lifecycle,
    PurgeTooSoon,
)
from flask_dependency_proxy.models.cleanup import CleanupRecords
from flask_dependency_proxy.models.group_paths import GroupPathRecords
from flask_dependency_proxy.models.group_settings import GroupSettingsRecords
from flask_dependency_proxy.models.hot_tags import HotTagRecords, write_reference_pulls
from flask_dependency_proxy.models.tables import (
    CachedBlob,
    CachedManifest,
    LoginFailure,
    Status,
    utcnow,
)
from flask_dependency_proxy.oci.reference import ProxyPath
from flask_dependency_proxy.stores.base import Following, LocalFile
from tests import lifecycle_fixtures as lf
from tests.platform_fixtures import build_world
from tests.support import images
from tests.support.fakeregistry import FakeRegistry, ServedBlob, sha256_digest
from tests.support.processes import wait_for
from tests.support.registry import Registry

if t.TYPE_CHECKING:
    from flask import Flask

DAY = {"days": 1}
GRACE = 600


def _days(n: int) -> dt.timedelta:
    return dt.timedelta(days=n)


def _minutes(n: int) -> dt.timedelta:
    return dt.timedelta(minutes=n)


@pytest.fixture
def clock() -> lf.Clock:
    return lf.Clock()


@pytest.fixture
def make_app(app_factory: t.Callable[..., Flask]) -> t.Iterator[t.Callable[..., Flask]]:
    """Build an app (``app_factory`` keywords) and push its app context."""
    contexts = []

    def make(**config: t.Any) -> Flask:
        app = app_factory(**config)
        context = app.app_context()
        context.push()
        contexts.append(context)
        return app

    yield make
    for context in reversed(contexts):
        state(context.app).metadata.session.remove()
        context.pop()


def lifecycle(clock: lf.Clock) -> Lifecycle:
    return state(None).lifecycle.with_clock(clock)


def on_disk(digest: str) -> list[Path]:
    """Every file under the store that carries the digest's hex (committed or set aside)."""
    root = Path(state(None).store.root)
    hex_ = digest.split(":", 1)[1]
    return [p for p in root.rglob("*") if p.is_file() and hex_ in p.name]


def _settings() -> GroupSettingsRecords:
    return GroupSettingsRecords(lambda: state(None).metadata.session, default_enabled=False)


def _cleanup_records() -> CleanupRecords:
    return CleanupRecords(lambda: state(None).metadata.session, _settings())


def set_policy(group_id: int, days: int, enabled: bool = True) -> None:
    _settings().update(group_id, lf.utcnow(), cleanup_enabled=enabled, cleanup_days=days)


# -- policy ---------------------------------------------------------------------------------------


def test_policy_deletes_what_was_not_pulled_for_n_days(
    make_app: t.Callable[..., Flask], clock: lf.Clock
) -> None:
    make_app()
    now = clock()
    set_policy(1, 30)
    lf.add_manifest(1, "old", "1", last_read_at=now - _days(40))
    kept_manifest = lf.add_manifest(1, "recent", "1", last_read_at=now - _days(10))
    old_blob = lf.add_blob(1, b"old layer", last_read_at=now - _days(40))
    recent_blob = lf.add_blob(1, b"recent layer", last_read_at=now - _days(10))
    # Group 2 has no policy: its old items stay.
    lf.add_manifest(2, "old", "1", last_read_at=now - _days(400))
    other_blob = lf.add_blob(2, b"other group's layer", last_read_at=now - _days(400))

    report = lifecycle(clock).cleanup()

    assert (report.manifests_marked, report.blobs_marked) == (1, 1)
    assert (report.manifests_deleted, report.blobs_deleted) == (1, 1)
    assert [d for d, _ in lf.rows(CachedManifest, 1)] == [kept_manifest.digest]
    assert lf.rows(CachedBlob, 1) == [(recent_blob, Status.DEFAULT)]
    assert len(lf.rows(CachedManifest, 2)) == 1
    assert lf.rows(CachedBlob, 2) == [(other_blob, Status.DEFAULT)]
    # The old blob's file was committed moments ago (as far as its mtime says), so it
    # waits out the grace period before it is set aside, and again before it is deleted.
    assert report.files_recent == 1 and report.files_deleted == 0
    assert state(None).store.size(old_blob) == len(b"old layer")

    clock.advance(seconds=GRACE + 60)  # past the grace, however slowly the files were written
    report = lifecycle(clock).cleanup()
    assert (report.files_set_aside, report.files_deleted) == (1, 0)
    assert state(None).store.size(old_blob) is None
    assert len(on_disk(old_blob)) == 1  # in the trash

    clock.advance(seconds=GRACE + 1)
    report = lifecycle(clock).cleanup()
    assert (report.files_deleted, report.bytes_deleted) == (1, len(b"old layer"))
    assert on_disk(old_blob) == []
    for digest in (recent_blob, other_blob):
        assert state(None).store.size(digest) is not None

    # Nothing left to do: a second run changes nothing.
    clock.advance(**DAY)
    assert lifecycle(clock).cleanup() == CleanupReport()


def test_policy_off_or_longer_keeps_items(
    make_app: t.Callable[..., Flask], clock: lf.Clock
) -> None:
    make_app()
    set_policy(1, 30, enabled=False)
    set_policy(2, 90)
    lf.add_manifest(1, "a", "1", last_read_at=clock() - _days(60))
    lf.add_manifest(2, "a", "1", last_read_at=clock() - _days(60))
    report = lifecycle(clock).cleanup()
    assert (report.manifests_marked, report.manifests_deleted) == (0, 0)
    assert len(lf.rows(CachedManifest)) == 2


# -- shared files ---------------------------------------------------------------------------------


def test_blob_file_survives_while_another_group_references_it(
    make_app: t.Callable[..., Flask], clock: lf.Clock
) -> None:
    make_app(DEPENDENCY_PROXY_CLEANUP_FILE_GRACE_SECONDS=0)
    shared = lf.add_blob(1, b"shared layer")
    assert lf.add_blob(2, b"shared layer") == shared
    clock.advance(seconds=60)  # the file was written after the clock was read, however slowly
    life = lifecycle(clock)

    life.purge(1)
    report = life.cleanup()
    assert report.blobs_deleted == 1
    assert lf.rows(CachedBlob) == [(shared, Status.DEFAULT)]
    assert state(None).store.size(shared) == len(b"shared layer")

    # A row pending destruction still references the file until it is deleted.
    life.purge(2)
    report = life.cleanup()
    assert (report.blobs_deleted, report.files_deleted) == (1, 1)
    assert lf.rows(CachedBlob) == []
    assert on_disk(shared) == []


# -- purge ----------------------------------------------------------------------------------------


def test_purge_stops_serving_at_once_and_has_a_cooldown(
    make_app: t.Callable[..., Flask], clock: lf.Clock
) -> None:
    make_app(DEPENDENCY_PROXY_GROUP_DEFAULT_ENABLED=True)
    metadata = state(None).metadata
    manifest = lf.add_manifest(1, "alpine", "3")
    blob = lf.add_blob(1, b"layer")
    lf.add_manifest(2, "alpine", "3")
    assert metadata.find_tag(1, "alpine", "3") is not None
    assert metadata.find_blob(1, blob) is not None

    result = lifecycle(clock).purge(1)

    assert (result.manifests, result.blobs) == (1, 1)
    assert metadata.find_tag(1, "alpine", "3") is None
    assert metadata.find_digest(1, "alpine", manifest.digest) is None
    assert metadata.find_blob(1, blob) is None
    assert lf.rows(CachedManifest, 1) == [(manifest.digest, Status.PENDING_DESTRUCTION)]
    assert metadata.find_tag(2, "alpine", "3") is not None  # other groups are untouched
    # Recording the purge did not switch off a proxy that is on by default.
    assert metadata.group_enabled(1, True)

    clock.advance(minutes=59)
    with pytest.raises(PurgeTooSoon) as refused:
        lifecycle(clock).purge(1)
    assert refused.value.retry_after_seconds == 60
    assert lifecycle(clock).purge(1, force=True).manifests == 0

    clock.advance(hours=1, seconds=1)
    assert lifecycle(clock).purge(1).manifests == 0


def test_pull_after_purge_brings_the_row_back(
    make_app: t.Callable[..., Flask], clock: lf.Clock
) -> None:
    """The cache writes the row again in the default status; cleanup leaves it alone."""
    make_app(DEPENDENCY_PROXY_CLEANUP_FILE_GRACE_SECONDS=0)
    metadata = state(None).metadata
    blob = lf.add_blob(1, b"layer")
    lifecycle(clock).purge(1)
    metadata.record_blob(1, blob, len(b"layer"))
    clock.advance(seconds=60)
    report = lifecycle(clock).cleanup()
    assert report.blobs_deleted == 0 and report.files_deleted == 0
    assert lf.rows(CachedBlob) == [(blob, Status.DEFAULT)]
    assert state(None).store.size(blob) == len(b"layer")


# -- batches, leases, scheduler ------------------------------------------------------------------


def test_cleanup_deletes_in_batches(make_app: t.Callable[..., Flask], clock: lf.Clock) -> None:
    make_app(DEPENDENCY_PROXY_CLEANUP_BATCH_SIZE=3, DEPENDENCY_PROXY_CLEANUP_FILE_GRACE_SECONDS=0)
    for n in range(10):
        lf.add_manifest(1, "many", str(n), status=Status.PENDING_DESTRUCTION)
    for n in range(7):
        lf.add_blob(1, b"layer %d" % n, status=Status.PENDING_DESTRUCTION)
    lf.add_manifest(1, "kept", "1")
    clock.advance(seconds=60)
    report = lifecycle(clock).cleanup()
    assert (report.manifests_deleted, report.blobs_deleted, report.files_deleted) == (10, 7, 7)
    assert [d for d, _ in lf.rows(CachedManifest)] == [lf.rows(CachedManifest)[0][0]]
    assert len(lf.rows(CachedManifest)) == 1


def test_one_cleanup_at_a_time_and_scheduled_runs_are_spaced(
    make_app: t.Callable[..., Flask], clock: lf.Clock
) -> None:
    make_app()
    admin = _cleanup_records()
    assert admin.acquire_lease(CLEANUP_LEASE, "another host", clock(), _minutes(15))
    with pytest.raises(CleanupBusy):
        lifecycle(clock).cleanup()
    assert lifecycle(clock).run_if_due(_minutes(60)) is None

    # A holder that died lets go when its lease expires.
    clock.advance(minutes=16)
    assert lifecycle(clock).run_if_due(_minutes(60)) is not None
    assert lifecycle(clock).run_if_due(_minutes(60)) is None
    clock.advance(minutes=61)
    assert lifecycle(clock).run_if_due(_minutes(60)) is not None
    # The command line does not wait for the interval.
    assert lifecycle(clock).cleanup() == CleanupReport()


def test_scheduler_runs_cleanup_in_the_web_process(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(
        DEPENDENCY_PROXY_CLEANUP_SCHEDULER=True, DEPENDENCY_PROXY_CLEANUP_INTERVAL_SECONDS=1
    )
    scheduler = state(app).scheduler
    assert scheduler is not None
    lf.add_manifest(1, "alpine", "3", status=Status.PENDING_DESTRUCTION)
    try:
        # The thread starts with the first request the process serves.
        app.test_client().get("/users/sign_in")
        wait_for(lambda: lf.rows(CachedManifest) == [], timeout=20, what="scheduled cleanup")
    finally:
        scheduler.stop()


def test_the_refresh_scheduler_thread_runs_a_pass_that_warms_a_hot_tag(
    make_app: t.Callable[..., Flask],
) -> None:
    """The refresher's thread starts with the first request and, on its own, checks the
    group's most pulled tag upstream and fetches its manifest and blobs ahead."""
    fake = FakeRegistry().start()
    try:
        config, layer = b'{"architecture": "amd64", "os": "linux"}', b"hot layer" * 100
        for blob in (config, layer):
            fake.add_blob("team/app", sha256_digest(blob), ServedBlob(blob))
        digest = fake.add_manifest(
            "team/app",
            "1",
            lf.OCI_MANIFEST,
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": lf.OCI_MANIFEST,
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "size": len(config),
                        "digest": sha256_digest(config),
                    },
                    "layers": [
                        {
                            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "size": len(layer),
                            "digest": sha256_digest(layer),
                        }
                    ],
                }
            ).encode(),
        )
        app = make_app(
            DEPENDENCY_PROXY_UPSTREAM_URL=fake.url,
            DEPENDENCY_PROXY_GROUP_DEFAULT_ENABLED=True,
            DEPENDENCY_PROXY_REFRESH_DEFAULT_ENABLED=True,
            DEPENDENCY_PROXY_REFRESH_SCHEDULER=True,
            DEPENDENCY_PROXY_REFRESH_INTERVAL_SECONDS=1,
        )
        scheduler = state(app).refresh_scheduler
        assert scheduler is not None
        org = build_world().group_ids["org"]
        session = state(app).metadata.session
        GroupPathRecords(lambda: session).record(org, "org", utcnow())
        write_reference_pulls(session, {(org, "team/app", "1", utcnow().date()): 3})
        records = HotTagRecords(lambda: session)

        def refreshed() -> bool:
            found = records.state(org, "team/app", "1")
            session.rollback()  # the next look reads what the thread committed since
            return found is not None and found.refreshed_digest == digest

        try:
            app.test_client().get("/users/sign_in")
            wait_for(refreshed, timeout=20, what="a scheduled refresh")
        finally:
            scheduler.stop()
        assert len(fake.blob_gets(sha256_digest(layer))) == 1
        assert [r.method for r in fake.requests if r.path.endswith("/manifests/1")][:1] == ["HEAD"]
    finally:
        fake.stop()


def test_scheduler_is_off_by_default(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    assert state(app).scheduler is None


# -- command line ---------------------------------------------------------------------------------


def test_cli_stats_purge_cleanup(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    world = build_world()
    org = world.group_ids["org"]
    lf.add_manifest(org, "alpine", "3", content=lf.image_manifest(10, [2048]))
    lf.add_blob(org, b"x" * 2048)
    runner = app.test_cli_runner()

    def run(*args: str) -> t.Any:
        return runner.invoke(args=["dependency-proxy", *args])

    result = run("stats", "org")
    assert result.exit_code == 0, result.output
    assert "org: 1 images, 1 manifests, 1 blobs" in result.output
    result = run("stats")
    assert result.exit_code == 0, result.output
    assert "org: 1 images" in result.output
    assert "Blobs in" in result.output and ": 1, 2.0 KiB" in result.output
    assert run("stats", "nowhere").exit_code != 0

    result = run("purge", "org")
    assert result.exit_code == 0, result.output
    assert "Scheduled 1 manifests and 1 blobs of org" in result.output
    result = run("purge", "org")
    assert result.exit_code == 1 and "Not purged" in result.output
    assert run("purge", "org", "--force").exit_code == 0
    assert "scheduled for deletion: 1 manifests, 1 blobs" in run("stats", "org").output

    result = run("cleanup")
    assert result.exit_code == 0, result.output
    assert "Deleted 1 manifests and 1 blobs" in result.output
    assert "org: 0 images, 0 manifests, 0 blobs" in run("stats", "org").output


# -- races with real pulls ------------------------------------------------------------------------


@pytest.fixture
def pushed(upstream: Registry, unique_name: str, tmp_path: Path) -> images.Pushed:
    image = images.build_image(unique_name, layer_sizes=(200_000,))
    return images.push(image, upstream, f"life/{unique_name}", "1", workdir=tmp_path)


def _race_cleanup_into_record_blob(
    app: Flask,
    monkeypatch: pytest.MonkeyPatch,
    clock: lf.Clock,
    *,
    purge_group: int,
    seen: list[CleanupReport],
) -> threading.Event:
    """Run a purge and a cleanup between a blob's commit and the recording of its row,
    the window a pull leaves open; the event is set once the row is recorded."""
    metadata = state(app).metadata
    original = metadata.record_blob
    recorded = threading.Event()

    def racing(group_id: int, digest: str, size: int) -> None:
        with app.app_context():
            try:
                state(app).lifecycle.with_clock(clock).purge(purge_group, force=True)
                seen.append(state(app).lifecycle.with_clock(clock).cleanup())
            finally:
                state(app).metadata.session.remove()
        original(group_id, digest, size)
        recorded.set()

    monkeypatch.setattr(metadata, "record_blob", racing)
    return recorded


def _pull_blob(group_id: int, image: str, digest: str) -> bytes | str:
    """What the registry view does: get the blob, release the connection, send it."""
    cache = state(None).cache
    try:
        result = cache.get_blob(group_id, ProxyPath(group_path="g", image=image), digest)
    finally:
        cache.finish_request()
    if isinstance(result.location, Following):
        return b"".join(result.location.chunks)
    assert isinstance(result.location, LocalFile)
    return result.location.path


@pytest.mark.e2e
def test_purge_and_cleanup_during_a_fetch_leave_row_and_file(
    make_app: t.Callable[..., Flask],
    upstream: Registry,
    pushed: images.Pushed,
    monkeypatch: pytest.MonkeyPatch,
    clock: lf.Clock,
) -> None:
    app = make_app(DEPENDENCY_PROXY_UPSTREAM_URL=upstream.url)
    layer = pushed.layer_digests[0]
    seen: list[CleanupReport] = []
    recorded = _race_cleanup_into_record_blob(app, monkeypatch, clock, purge_group=1, seen=seen)

    body = _pull_blob(1, pushed.repository, layer)

    assert body == upstream.read_blob(layer)
    assert recorded.wait(30)
    # Cleanup ran after the commit and before the row: the fresh file was spared.
    assert seen[0].files_recent == 1 and seen[0].files_set_aside == 0
    assert lf.rows(CachedBlob, 1) == [(layer, Status.DEFAULT)]
    assert state(None).store.size(layer) == len(body)

    monkeypatch.undo()
    clock.advance(seconds=2 * GRACE + 2)
    lifecycle(clock).cleanup()
    clock.advance(seconds=GRACE + 1)
    report = lifecycle(clock).cleanup()
    assert report.files_deleted == 0
    assert state(None).store.size(layer) == len(body)


@pytest.mark.e2e
def test_without_the_grace_period_that_race_orphans_a_row_until_the_next_pull(
    make_app: t.Callable[..., Flask],
    upstream: Registry,
    pushed: images.Pushed,
    monkeypatch: pytest.MonkeyPatch,
    clock: lf.Clock,
) -> None:
    """The window the grace period covers is real: with it off, the same interleaving
    deletes the fresh file; the row left behind makes the next pull fetch again."""
    app = make_app(
        DEPENDENCY_PROXY_UPSTREAM_URL=upstream.url, DEPENDENCY_PROXY_CLEANUP_FILE_GRACE_SECONDS=0
    )
    layer = pushed.layer_digests[0]
    clock.advance(seconds=5)  # later than the commit, which happens in the next second
    seen: list[CleanupReport] = []
    recorded = _race_cleanup_into_record_blob(app, monkeypatch, clock, purge_group=1, seen=seen)
    with contextlib.suppress(FileNotFoundError):
        # A reader that reaches the committed file after it went fails as well.
        _pull_blob(1, pushed.repository, layer)
    assert recorded.wait(30)
    assert seen[0].files_deleted == 1
    assert lf.rows(CachedBlob, 1) == [(layer, Status.DEFAULT)]
    assert state(None).store.size(layer) is None

    monkeypatch.undo()
    assert _pull_blob(1, pushed.repository, layer) == upstream.read_blob(layer)
    wait_for(lambda: state(None).store.size(layer) is not None, timeout=10, what="refetched file")


@pytest.mark.e2e
def test_set_aside_file_comes_back_when_a_pull_of_another_group_claims_it(
    make_app: t.Callable[..., Flask],
    upstream: Registry,
    pushed: images.Pushed,
    monkeypatch: pytest.MonkeyPatch,
    clock: lf.Clock,
) -> None:
    """Group 2 pulls a blob group 1 cached, while group 1 is purged and cleaned up: the
    file is set aside between group 2's check and its row, then put back."""
    app = make_app(DEPENDENCY_PROXY_UPSTREAM_URL=upstream.url)
    layer = pushed.layer_digests[0]
    data = upstream.read_blob(layer)
    assert _pull_blob(1, pushed.repository, layer) == data
    wait_for(lambda: lf.rows(CachedBlob, 1) != [], timeout=10, what="group 1's row")
    # An old file, as far as its mtime says.
    path = state(None).store.path(layer)
    old = os.stat(path).st_mtime - 2 * GRACE
    os.utime(path, (old, old))

    seen: list[CleanupReport] = []
    recorded = _race_cleanup_into_record_blob(app, monkeypatch, clock, purge_group=1, seen=seen)
    _pull_blob(2, pushed.repository, layer)
    assert recorded.wait(30)
    monkeypatch.undo()
    assert seen[0].blobs_deleted == 1 and seen[0].files_set_aside == 1
    assert lf.rows(CachedBlob) == [(layer, Status.DEFAULT)]  # group 2's row

    clock.advance(seconds=GRACE + 1)
    report = lifecycle(clock).cleanup()
    assert (report.files_restored, report.files_deleted) == (1, 0)
    assert Path(path).read_bytes() == data
    assert on_disk(layer) == [Path(path)]
    assert _pull_blob(2, pushed.repository, layer) == path


def test_leases_are_one_row_per_name(make_app: t.Callable[..., Flask], clock: lf.Clock) -> None:
    make_app()
    admin = _cleanup_records()
    assert admin.acquire_lease("job", "a", clock(), _minutes(1))
    assert not admin.acquire_lease("job", "b", clock(), _minutes(1))
    admin.release_lease("job", "a", clock(), finished=False)
    assert admin.acquire_lease("job", "b", clock(), _minutes(1))
    count = (
        state(None)
        .metadata.session.execute(sa.text("SELECT count(*) FROM dependency_proxy_leases"))
        .scalar_one()
    )
    assert count == 1


def test_cleanup_removes_staging_files_of_fetches_that_died(
    make_app: t.Callable[..., Flask], clock: lf.Clock
) -> None:
    make_app()
    store = state(None).store
    dead = store.spool.path("sha256:" + "d" * 64)
    live = store.spool.path("sha256:" + "e" * 64)
    for path in (dead, live):
        Path(path).write_bytes(b"partial")
    hour_ago = (clock() - dt.timedelta(hours=1, minutes=1)).replace(tzinfo=dt.UTC).timestamp()
    os.utime(dead, (hour_ago, hour_ago))
    os.utime(live, (hour_ago + 120, hour_ago + 120))

    report = lifecycle(clock).cleanup()

    assert report.staging_removed == 1
    assert not os.path.exists(dead)
    assert os.path.exists(live)


def test_cleanup_forgets_failed_logins_whose_window_ended(
    make_app: t.Callable[..., Flask], clock: lf.Clock
) -> None:
    make_app(DEPENDENCY_PROXY_LOGIN_FAILURE_WINDOW_SECONDS=300)
    throttle = state(None).access.throttle
    for address in ("192.0.2.1", "192.0.2.2"):
        throttle.record_failure(throttle.check("alice", address))
    session = state(None).metadata.session
    rows = session.scalars(sa.select(LoginFailure)).all()
    assert len(rows) == 4  # (alice, address) and address, for both addresses
    keys = [row.key for row in rows]
    for row in rows[:2]:
        row.window_started_at = clock() - dt.timedelta(seconds=301)
    session.commit()

    report = lifecycle(clock).cleanup()

    assert report.login_failures_forgotten == 2
    assert sorted(session.scalars(sa.select(LoginFailure.key)).all()) == sorted(keys[2:])


@pytest.mark.parametrize("kind", ["blob", "manifest"])
def test_a_row_deleted_by_cleanup_while_a_pull_claims_it_is_recorded_again(
    make_app: t.Callable[..., Flask], kind: str
) -> None:
    """Cleanup deletes a purged row between the pull's read of it and its write: the
    pull's write matches no row. It must insert the row again, not fail."""
    app = make_app()
    digest = lf.sha256(b"raced")
    with app.app_context():
        metadata = state(None).metadata
        if kind == "blob":
            metadata.record_blob(1, digest, 5)
            table: t.Any = CachedBlob
        else:
            metadata.save_manifest(
                1, "img", "1", digest=digest, media_type=lf.OCI_MANIFEST, content=b"{}"
            )
            table = CachedManifest
        state(app).lifecycle.purge(1, force=True)
        metadata.session.remove()
        engine = metadata.session.get_bind()
        deleted = []

        @sa.event.listens_for(metadata.session, "before_flush")
        def delete_underneath(session: t.Any, context: t.Any, instances: t.Any) -> None:
            if not deleted:
                with engine.begin() as other:
                    deleted.append(other.execute(sa.delete(table)).rowcount)

        try:
            if kind == "blob":
                metadata.record_blob(1, digest, 5)
            else:
                metadata.save_manifest(
                    1, "img", "1", digest=digest, media_type=lf.OCI_MANIFEST, content=b"{}"
                )
        finally:
            sa.event.remove(metadata.session, "before_flush", delete_underneath)
        assert deleted == [1]
        assert lf.rows(table, 1) == [(digest, Status.DEFAULT)]
        metadata.session.remove()


def _in_another_session(app: Flask, work: t.Callable[[Lifecycle], object]) -> None:
    """Run ``work`` on the life cycle from another thread (its own session), as an
    operator's command or another worker would, and wait for it."""
    failures: list[BaseException] = []

    def run() -> None:
        with app.app_context():
            try:
                work(state(app).lifecycle)
            except BaseException as exc:  # noqa: B036 - reported to the test below
                failures.append(exc)
            finally:
                state(app).metadata.session.remove()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and not failures, failures


@pytest.mark.parametrize("purged", ["between_read_and_write", "after_write"])
@pytest.mark.parametrize("kind", ["manifest", "blob"])
def test_a_pull_saved_while_purge_and_cleanup_run_is_answered(
    make_app: t.Callable[..., Flask], kind: str, purged: str
) -> None:
    """A pull saves what upstream gave it (a tag's new digest, a blob's row) while the
    group is purged and cleaned up. The pull is answered either way; the group keeps the
    row only when the pull's write came after the purge (a pull that completes after a
    purge caches again), never when the purge came after the write."""
    app = make_app()
    metadata = state(None).metadata
    old, new = b'{"tag": "old"}', b'{"tag": "new"}'
    table: t.Any = CachedManifest if kind == "manifest" else CachedBlob

    def pull(content: bytes) -> t.Any:
        if kind == "blob":
            return metadata.record_blob(1, lf.sha256(content), len(content))
        return metadata.save_manifest(
            1, "img", "1", digest=lf.sha256(content), media_type=lf.OCI_MANIFEST, content=content
        )

    pull(new if kind == "blob" else old)
    metadata.session.remove()
    pulling = threading.get_ident()
    steps: list[str] = []

    def purge(lifecycle: Lifecycle) -> None:
        lifecycle.purge(1, force=True)

    @sa.event.listens_for(metadata.session, "before_flush")
    def purge_underneath(session: t.Any, context: t.Any, instances: t.Any) -> None:
        if threading.get_ident() == pulling and purged == "between_read_and_write" and not steps:
            steps.append("purged")
            _in_another_session(app, purge)

    @sa.event.listens_for(metadata.session, "after_commit")
    def clean_up_after(session: t.Any) -> None:
        if threading.get_ident() != pulling or "cleaned" in steps:
            return
        if purged == "after_write":
            steps.append("purged")
            _in_another_session(app, purge)
        steps.append("cleaned")
        _in_another_session(app, lambda lifecycle: lifecycle.cleanup())

    try:
        record = pull(new)
    finally:
        sa.event.remove(metadata.session, "before_flush", purge_underneath)
        sa.event.remove(metadata.session, "after_commit", clean_up_after)
    assert steps == ["purged", "cleaned"]
    kept = [(lf.sha256(new), Status.DEFAULT)] if purged == "between_read_and_write" else []
    assert lf.rows(table, 1) == kept
    if kind == "manifest":
        assert (record.digest, record.content) == (lf.sha256(new), new)
        # What the pull answered stays usable: bookkeeping on a deleted row is a no-op.
        metadata.mark_checked(record)
    metadata.session.remove()
