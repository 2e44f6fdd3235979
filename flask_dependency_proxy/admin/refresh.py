"""Runs predictive refresh (:mod:`..cache.refresh`) from a thread of each web process,
and the warm-ups the REST API queues (:class:`WarmQueue`); tells the group page and the
API what the refresher did per tag and whether it made the tag's last pull warm
(:func:`refresh_view`).

The model is :class:`.lifecycle.CleanupScheduler`: every process polls, and the
``refresh`` lease (with the time the last run finished) lets one of them run per poll
interval, whichever host it is on; each hot tag then waits for its group's interval.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import queue
import threading
import typing as t

from ..cache.refresh import RefreshReport
from ..cache.results import Outcome
from .periodic import PeriodicJob

if t.TYPE_CHECKING:
    from flask import Flask

    from ..cache.refresh import RefreshDefaults, TagRefresher
    from ..cache.warm import Target
    from ..models.group_settings import Settings
    from ..models.hot_tags import HotTagRecords, RefreshState
    from ..models.pulls import PullEntry, PullRecords

log = logging.getLogger(__name__)

#: Most seconds between two polls of a process.
_MAX_POLL_SECONDS = 60.0


#: Pulls served from the cache with the digest the cache held: a hit, or a hit after
#: upstream's ``HEAD`` confirmed the digest (the tag's check interval had passed).
WARM_OUTCOMES = frozenset({Outcome.HIT.value, Outcome.REVALIDATED.value})


@dataclasses.dataclass(frozen=True)
class TagRefreshStatus:
    """What the refresher last did with one tag, and the tag's last pull since.

    :param last_pull: the group's last pull of the tag at or after the refresh that
        fetched ``state.refreshed_digest``; ``None`` if none (or no such refresh).
    :param warm_because_of_refresh: that pull served, from the cache, the digest the
        refresher fetched ahead; ``None`` when the pull record is off (unknown).
    """

    state: RefreshState
    last_pull: PullEntry | None
    warm_because_of_refresh: bool | None


@dataclasses.dataclass(frozen=True)
class RefreshView:
    """A group's refresh settings in effect and its refreshed tags, by image and tag."""

    enabled: bool
    tags: int
    interval_seconds: int
    budget_per_run: int
    statuses: list[TagRefreshStatus]


def refresh_view(
    group_id: int,
    settings: Settings,
    defaults: RefreshDefaults,
    records: HotTagRecords,
    pulls: PullRecords | None,
) -> RefreshView:
    """The group's :class:`RefreshView`; ``pulls`` is ``None`` when the pull record is
    off, and then whether a pull was warm because of a refresh is not known."""
    on, tags, interval = defaults.for_group(settings)
    return RefreshView(
        enabled=on,
        tags=tags,
        interval_seconds=int(interval),
        budget_per_run=defaults.budget,
        statuses=[_status(group_id, state, pulls) for state in records.states(group_id)],
    )


def _status(group_id: int, state: RefreshState, pulls: PullRecords | None) -> TagRefreshStatus:
    if pulls is None:
        return TagRefreshStatus(state, None, None)
    if state.refreshed_at is None or state.refreshed_digest is None:
        return TagRefreshStatus(state, None, False)
    last = pulls.last_pull(group_id, state.image, state.tag, state.refreshed_at)
    warm = (
        last is not None and last.digest == state.refreshed_digest and last.outcome in WARM_OUTCOMES
    )
    return TagRefreshStatus(state, last, warm)


class RefreshScheduler(PeriodicJob[RefreshReport]):
    """Polls for a due refresh run every ``poll_seconds`` (at most a minute) from a
    thread of each web process; the refresh lease lets one of them run it
    (:class:`~.periodic.PeriodicJob`)."""

    def __init__(
        self,
        app: Flask,
        refresher: TagRefresher,
        poll_seconds: float,
        *,
        release: t.Callable[[], None],
        context: t.Callable[[], t.ContextManager[object]] | None = None,
    ) -> None:
        self.refresher = refresher
        poll = min(poll_seconds, _MAX_POLL_SECONDS)
        self.interval = dt.timedelta(seconds=poll)
        super().__init__(
            app,
            lambda: refresher.run_if_due(self.interval),
            poll,
            name="dependency-proxy-refresh",
            release=release,
            context=context,
        )


class WarmQueue:
    """Warm-ups asked for over the REST API, run one after another by a thread of the
    process that was asked (started with the first request), so the request answers at
    once (``202``). What is queued when the process exits is not warmed: a pipeline
    that needs it pulls it anyway.

    :param warm: warms targets into a group (``GroupAdmin.warm`` with a silent progress).
    """

    #: Most warm-ups waiting in one process; more are refused (``503``).
    MAX_WAITING = 100

    def __init__(
        self,
        app: Flask,
        warm: t.Callable[[int, str, t.Sequence[Target]], object],
        *,
        release: t.Callable[[], None],
        context: t.Callable[[], t.ContextManager[object]] | None = None,
    ) -> None:
        self.app = app
        self._warm = warm
        self._release = release
        self._context = context or app.app_context
        self._queue: queue.Queue[tuple[int, str, list[Target]]] = queue.Queue(self.MAX_WAITING)
        self._pid: int | None = None
        self._lock = threading.Lock()

    def put(self, group_id: int, group_path: str, targets: t.Sequence[Target]) -> bool:
        """Queue a warm-up; ``False`` when too many wait already."""
        self._ensure_started()
        try:
            self._queue.put_nowait((group_id, group_path, list(targets)))
        except queue.Full:
            return False
        return True

    def join(self) -> None:
        """Wait until every queued warm-up is done (tests)."""
        self._queue.join()

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._loop, name="dependency-proxy-warm", daemon=True).start()

    def _loop(self) -> None:
        while True:
            group_id, group_path, targets = self._queue.get()
            try:
                with self._context():
                    try:
                        self._warm(group_id, group_path, targets)
                    finally:
                        self._release()
            except Exception:
                log.exception("warm-up of group %s failed", group_id)
            finally:
                self._queue.task_done()
