"""Runs predictive refresh (:mod:`..cache.refresh`) from a thread of each web process.

The model is :class:`.lifecycle.CleanupScheduler`: every process polls, and the
``refresh`` lease (with the time the last run finished) lets one of them run per poll
interval, whichever host it is on; each hot tag then waits for its group's interval.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import threading
import typing as t

if t.TYPE_CHECKING:
    from flask import Flask

    from ..cache.refresh import RefreshReport, TagRefresher

log = logging.getLogger(__name__)

#: Most seconds between two polls of a process.
_MAX_POLL_SECONDS = 60.0


class RefreshScheduler:
    """Polls for a due refresh run every ``poll_seconds`` (at most a minute).

    :param release: ends the thread's database session after each poll.
    :param context: the context each poll runs in (the host's ``outside_request``).
    """

    def __init__(
        self,
        app: Flask,
        refresher: TagRefresher,
        poll_seconds: float,
        *,
        release: t.Callable[[], None],
        context: t.Callable[[], t.ContextManager[object]] | None = None,
    ) -> None:
        self.app = app
        self.refresher = refresher
        self._release = release
        self._context = context or app.app_context
        self._poll = min(poll_seconds, _MAX_POLL_SECONDS)
        self.interval = dt.timedelta(seconds=self._poll)
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def install(self) -> None:
        self.app.before_request(self._ensure_started)

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name="dependency-proxy-refresh", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (tests; a process that exits needs not call it)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._pid = None

    def _loop(self) -> None:
        while not self._stop.wait(random.uniform(0.5, 1.0) * self._poll):
            self.run_once()

    def run_once(self) -> RefreshReport | None:
        """A refresh run if one is due; errors are logged, never raised."""
        try:
            with self._context():
                try:
                    return self.refresher.run_if_due(self.interval)
                finally:
                    self._release()
        except Exception:
            log.exception("scheduled dependency proxy refresh failed")
            return None
