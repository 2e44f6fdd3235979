"""A job that every web process polls for from a thread of its own (cleanup, predictive
refresh).

Every process polls; the job's own lease decides which of them runs it, whichever host
it is on. The thread starts with the first request a process serves, so it also runs in
workers forked after the app was created, and polls at a random point of each period so
workers that started together do not all ask at once.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import typing as t

if t.TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

R = t.TypeVar("R")


class PeriodicJob(t.Generic[R]):
    """Calls ``job`` about every ``poll_seconds`` from a daemon thread of each process.

    :param job: one poll: the job's report when it ran, ``None`` when it was not due.
    :param name: the thread's name, and what the log calls the job.
    :param release: ends the thread's database session after each poll.
    :param context: the context each poll runs in: an app context, and the host's
        ``outside_request`` context within it (by default only ``app.app_context()``).
    """

    def __init__(
        self,
        app: Flask,
        job: t.Callable[[], R | None],
        poll_seconds: float,
        *,
        name: str,
        release: t.Callable[[], None],
        context: t.Callable[[], t.ContextManager[object]] | None = None,
    ) -> None:
        self.app = app
        self._job = job
        self._poll = poll_seconds
        self._name = name
        self._release = release
        self._context = context or app.app_context
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
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
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

    def run_once(self) -> R | None:
        """One poll; errors are logged, never raised."""
        try:
            with self._context():
                try:
                    return self._job()
                finally:
                    self._release()
        except Exception:
            log.exception("scheduled %s failed", self._name)
            return None
