"""The life cycle of cached content: purge, cleanup policy, deletion of rows and files.

- A **purge** marks a group's manifests and blobs pending destruction. The registry
  serves only rows in the default status, so they stop being served at once; the next
  pull asks upstream again (and brings a row back to life if it pulls the same content).
  Another purge of the group within ``PURGE_COOLDOWN_SECONDS`` is refused.
- **Forgetting a group** (the host deleted it) marks its rows as a purge does, without
  the cooldown, and deletes the rest of what the extension keeps for it.
- **Deleting one image** marks the same way: the image's manifests, and the blobs they
  reference that no other manifest of the group still served references. Cleanup then
  deletes them like purged rows, files included (with the grace period below).
- **Cleanup** applies each group's policy (marks rows last read more than N days ago),
  deletes marked rows in batches, then deletes blob files that no row references,
  forgets failed-login counts whose window has ended, and pulls of the pull record
  older than ``PULL_RECORD_RETENTION_DAYS``.

Blob files are content-addressed and shared by groups, so a file goes only when no
row of any group, in any status, references its digest. Pulls run meanwhile, and two
of their steps are not atomic with the rows: a fetch commits a file and then records
its row; a pull that finds the file already there (another group cached it) checks it,
asks upstream, then records its row. Deleting a file between those steps would leave a
row without a file. So a file is deleted in two steps, each guarded by the grace
period ``CLEANUP_FILE_GRACE_SECONDS``:

1. Set aside: a committed file whose digest no row references, and whose mtime (the
   time its bytes were written, just before the commit) is older than the grace period,
   is renamed into ``<store>/trash/``. A fetch that committed it recently still has
   time to record its row; readers that already opened it keep reading (POSIX).
2. Delete: a set-aside file is looked at again once it has been set aside for the grace
   period. If a row references its digest by then (a pull that had seen the file
   recorded it), it is put back, unless a fetch already committed a new copy; otherwise
   it is deleted.

A pull that saw the file just before it was set aside, and opens it after, fails once
and succeeds on the retry (its row then leads to a fresh fetch); nothing is left
inconsistent. Every step is idempotent, so a cleanup that dies half way is finished by
the next one. A lease in the database keeps two cleanups from running at once.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import typing as t

from ..metrics import Metrics
from ..models.cleanup import CleanupRecords
from ..models.group_settings import GroupSettingsRecords
from ..models.job_lease import HeldLease, held_lease
from ..models.pulls import PullRecords
from ..models.stats import human_size
from ..models.tables import CachedBlob, CachedManifest, utcnow
from ..stores.base import StoreJanitor
from .periodic import PeriodicJob

if t.TYPE_CHECKING:
    from flask import Flask

    from ..config import ProxyConfig

log = logging.getLogger(__name__)

Clock = t.Callable[[], dt.datetime]

#: The lease every cleanup holds, whoever starts it.
CLEANUP_LEASE = "cleanup"
#: A cleanup renews its lease after each batch; one that died releases it after this.
_LEASE_TTL = dt.timedelta(minutes=15)
#: How often each process's scheduler looks whether a cleanup is due.
_SCHEDULER_POLL_SECONDS = 300.0
#: A staging file nobody wrote to for this long belongs to a fetch that died with its
#: process, unless its digest's fetch lock is held: a live fetch may pause writing for
#: longer (a slow upstream, the upload of a large blob's rest at the commit).
_STALE_STAGING = dt.timedelta(hours=1)
#: Digests looked up in the database per query while sweeping the store.
_SWEEP_CHUNK = 500


class PurgeTooSoon(Exception):
    """The group's cache was purged less than the cooldown ago.

    :param purged_at: when that purge happened (naive UTC).
    :param retry_at: when a purge is accepted again.
    """

    def __init__(self, purged_at: dt.datetime, retry_at: dt.datetime, now: dt.datetime) -> None:
        super().__init__(
            f"the cache was cleared at {purged_at:%Y-%m-%d %H:%M:%S} UTC;"
            f" it can be cleared again from {retry_at:%Y-%m-%d %H:%M:%S} UTC"
        )
        self.purged_at = purged_at
        self.retry_at = retry_at
        self.retry_after_seconds = max(1, int((retry_at - now).total_seconds() + 0.999))


class CleanupBusy(Exception):
    """Another cleanup holds the lease."""


@dataclasses.dataclass(frozen=True)
class ImageDeleted:
    """What deleting one image scheduled for deletion."""

    image: str
    manifests: int
    blobs: int


@dataclasses.dataclass(frozen=True)
class GroupForgotten:
    """What forgetting a group deleted of its cache (its other rows are gone too)."""

    group_id: int
    manifests: int
    blobs: int


@dataclasses.dataclass(frozen=True)
class PurgeResult:
    manifests: int
    blobs: int
    purged_at: dt.datetime


@dataclasses.dataclass
class CleanupReport:
    """What one cleanup did."""

    manifests_marked: int = 0
    blobs_marked: int = 0
    manifests_deleted: int = 0
    blobs_deleted: int = 0
    #: Unreferenced files renamed into the trash in this run.
    files_set_aside: int = 0
    #: Unreferenced files kept because they were committed within the grace period.
    files_recent: int = 0
    #: Set-aside files put back because a row referenced them again.
    files_restored: int = 0
    files_deleted: int = 0
    bytes_deleted: int = 0
    #: Staging files of fetches that died with their process.
    staging_removed: int = 0
    #: Failed-login counts whose window had ended.
    login_failures_forgotten: int = 0
    #: Pulls of the pull record older than its retention.
    pulls_forgotten: int = 0

    def summary(self) -> str:
        return (
            f"Marked {self.manifests_marked} manifests and {self.blobs_marked} blobs past"
            f" their group's cleanup policy. Deleted {self.manifests_deleted} manifests and"
            f" {self.blobs_deleted} blobs. Deleted {self.files_deleted} blob files"
            f" ({human_size(self.bytes_deleted)}); set aside {self.files_set_aside},"
            f" restored {self.files_restored}, kept {self.files_recent} committed within"
            " the grace period."
        )

    def removed_counts(self) -> dict[str, int]:
        """What this run removed, by kind, as metrics count it."""
        return {
            "manifests": self.manifests_deleted,
            "blobs": self.blobs_deleted,
            "files": self.files_deleted,
            "bytes": self.bytes_deleted,
            "staging_files": self.staging_removed,
        }


class Lifecycle:
    """Purge and cleanup for one application, built once by the extension (its
    ``ProxyState.lifecycle``); it keeps no state between calls, so threads share it.

    :param records: the queries.
    :param files: the blob store's sweeping face.
    :param clock: naive UTC now; tests pass one they control.
    """

    def __init__(
        self,
        records: CleanupRecords,
        files: StoreJanitor,
        *,
        purge_cooldown_seconds: float,
        batch_size: int,
        file_grace_seconds: float,
        login_failure_window_seconds: float = 300,
        clock: Clock = utcnow,
        metrics: Metrics | None = None,
        pulls: PullRecords | None = None,
        pull_retention_days: int = 90,
    ) -> None:
        self.records = records
        #: The pull record, whose entries older than ``pull_retention_days`` go.
        self.pulls = pulls
        self.pull_retention = dt.timedelta(days=pull_retention_days)
        self.metrics = metrics or Metrics()
        self.files = files
        self.purge_cooldown = dt.timedelta(seconds=purge_cooldown_seconds)
        self.batch_size = batch_size
        self.file_grace = dt.timedelta(seconds=file_grace_seconds)
        self.login_failure_window = dt.timedelta(seconds=login_failure_window_seconds)
        self.clock = clock

    @classmethod
    def from_config(
        cls,
        config: ProxyConfig,
        session: t.Callable[[], t.Any],
        store: StoreJanitor,
        *,
        clock: Clock = utcnow,
        metrics: Metrics | None = None,
    ) -> Lifecycle:
        settings = GroupSettingsRecords(session, default_enabled=config.group_default_enabled)
        return cls(
            CleanupRecords(session, settings),
            store,
            purge_cooldown_seconds=config.purge_cooldown_seconds,
            batch_size=config.cleanup_batch_size,
            file_grace_seconds=config.cleanup_file_grace_seconds,
            login_failure_window_seconds=config.login_failure_window_seconds,
            clock=clock,
            metrics=metrics,
            pulls=PullRecords(session),
            pull_retention_days=config.pull_record_retention_days,
        )

    def with_clock(self, clock: Clock) -> Lifecycle:
        """The same life cycle reading ``clock`` (a cleanup run as if later, in tests)."""
        moved = copy.copy(self)
        moved.clock = clock
        return moved

    # -- purge ---------------------------------------------------------------------------

    def purge(self, group_id: int, *, force: bool = False) -> PurgeResult:
        """Schedule everything the group cached for deletion.

        :param force: ignore the cooldown (operators, from the command line).
        :raises PurgeTooSoon: the group was purged less than the cooldown ago.
        """
        now = self.clock()
        cooldown = dt.timedelta(0) if force else self.purge_cooldown
        done, previous, manifests, blobs = self.records.claim_purge(group_id, now, cooldown)
        if not done:
            purged_at = previous or now
            raise PurgeTooSoon(purged_at, purged_at + self.purge_cooldown, now)
        log.info("purged group %s: %s manifests, %s blobs", group_id, manifests, blobs)
        return PurgeResult(manifests=manifests, blobs=blobs, purged_at=now)

    def delete_image(self, group_id: int, image: str) -> ImageDeleted | None:
        """Schedule one image of the group for deletion (see the module docstring).

        :return: ``None`` if the group has no manifest of ``image`` still served.
        """
        marked = self.records.mark_image(group_id, image)
        if marked is None:
            return None
        log.info("deleted image %s of group %s: %s manifests, %s blobs", image, group_id, *marked)
        return ImageDeleted(image, *marked)

    def forget_group(self, group_id: int) -> GroupForgotten:
        """Drop everything the extension keeps for a group that is gone: every row,
        its cache's included; blob files no row references go with the next sweep."""
        manifests, blobs = self.records.forget_group(group_id)
        log.info("forgot group %s: %s manifests, %s blobs", group_id, manifests, blobs)
        return GroupForgotten(group_id, manifests, blobs)

    # -- cleanup -------------------------------------------------------------------------

    def cleanup(self) -> CleanupReport:
        """One full cleanup under the cleanup lease.

        :raises CleanupBusy: another cleanup is running.
        """
        with held_lease(self.records, CLEANUP_LEASE, ttl=_LEASE_TTL, clock=self.clock) as lease:
            if lease is None:
                raise CleanupBusy("another cleanup is running; try again when it is done")
            return self._run(lease)

    def run_if_due(self, interval: dt.timedelta) -> CleanupReport | None:
        """Run a cleanup unless one ran less than ``interval`` ago or is running."""
        with held_lease(
            self.records, CLEANUP_LEASE, ttl=_LEASE_TTL, clock=self.clock, min_interval=interval
        ) as lease:
            return None if lease is None else self._run(lease)

    def _run(self, lease: HeldLease) -> CleanupReport:
        try:
            report = self._cleanup(lease.renew)
        except Exception:
            self.metrics.cleanup_ran(None, failed=True)
            raise
        self.metrics.cleanup_ran(report.removed_counts())
        return report

    def _cleanup(self, renew: t.Callable[[], None]) -> CleanupReport:
        report = CleanupReport()

        report.manifests_marked, report.blobs_marked = self.records.mark_expired(self.clock())
        report.manifests_deleted = self.records.delete_marked(
            CachedManifest, self.batch_size, renew
        )
        report.blobs_deleted = self.records.delete_marked(CachedBlob, self.batch_size, renew)
        self._sweep(report, renew)
        self._empty_trash(report)
        report.staging_removed = self.files.remove_stale_staging(self.clock() - _STALE_STAGING)
        report.login_failures_forgotten = self.records.forget_login_failures(
            self.clock() - self.login_failure_window
        )
        if self.pulls is not None:
            report.pulls_forgotten = self.pulls.forget_before(
                self.clock() - self.pull_retention, self.batch_size
            )
        log.info("dependency proxy cleanup: %s", report.summary())
        return report

    def _sweep(self, report: CleanupReport, renew: t.Callable[[], None]) -> None:
        """Set aside committed files no row references (step 1 of the module docstring)."""
        chunk: list[tuple[str, float]] = []
        for found in self.files.committed():
            chunk.append(found)
            if len(chunk) >= _SWEEP_CHUNK:
                self._sweep_chunk(chunk, report)
                chunk = []
                renew()
        if chunk:
            self._sweep_chunk(chunk, report)

    def _sweep_chunk(self, chunk: list[tuple[str, float]], report: CleanupReport) -> None:
        referenced = self.records.referenced([digest for digest, _ in chunk])
        now = self.clock()
        committed_before = _epoch(now - self.file_grace)
        for digest, mtime in chunk:
            if digest in referenced:
                continue
            if mtime > committed_before:
                report.files_recent += 1
                continue
            if self.files.set_aside(digest, now):
                report.files_set_aside += 1

    def _empty_trash(self, report: CleanupReport) -> None:
        """Delete set-aside files still unreferenced after the grace period; put back
        those a row references again (step 2 of the module docstring)."""
        now = self.clock()
        due = [
            (digest, path)
            for digest, stamp, path in self.files.set_aside_blobs()
            if stamp <= now - self.file_grace
        ]
        for start in range(0, len(due), _SWEEP_CHUNK):
            chunk = due[start : start + _SWEEP_CHUNK]
            referenced = self.records.referenced({digest for digest, _ in chunk})
            for digest, path in chunk:
                if digest in referenced:
                    if self.files.restore(digest, path):
                        report.files_restored += 1
                        log.info("restored blob file %s: a pull claimed it again", digest)
                    continue
                size = self.files.delete_set_aside(path)
                if size is not None:
                    report.files_deleted += 1
                    report.bytes_deleted += size


class CleanupScheduler(PeriodicJob[CleanupReport]):
    """Runs cleanup every ``interval_seconds`` from a thread of each web process; the
    cleanup lease (with the time the last run finished) lets one of them run per
    interval (:class:`~.periodic.PeriodicJob`)."""

    def __init__(
        self,
        app: Flask,
        lifecycle: Lifecycle,
        interval_seconds: float,
        *,
        release: t.Callable[[], None],
        context: t.Callable[[], t.ContextManager[object]] | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.interval = dt.timedelta(seconds=interval_seconds)
        super().__init__(
            app,
            lambda: lifecycle.run_if_due(self.interval),
            min(interval_seconds, _SCHEDULER_POLL_SECONDS),
            name="dependency-proxy-cleanup",
            release=release,
            context=context,
        )


def _epoch(moment: dt.datetime) -> float:
    return moment.replace(tzinfo=dt.UTC).timestamp()
