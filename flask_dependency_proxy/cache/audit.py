"""Who pulled what: manifest pulls collected in memory and written in batches.

The registry views add one :class:`~..models.pulls.PullEntry` per manifest GET;
nothing here writes per request. A flush takes the buffered entries away and hands them
to a writer, at most every ``flush_seconds``; when the writer fails (the database is
down), they go back into the buffer for the next flush. The buffer is bounded: past
``max_pending`` entries the oldest are dropped and counted (``dropped``, and the
``dependency_proxy_pull_records_lost`` metric), so an outage never costs the pulls
themselves anything but their record. Entries a process holds when it dies are lost.

This module knows no Flask, SQL or HTTP.
"""

from __future__ import annotations

import collections
import threading
import time
import typing as t

from ..models.pulls import PullEntry

#: Seconds between two flushes of one process's buffer.
FLUSH_SECONDS = 5.0
#: Entries kept while the database cannot take them.
MAX_PENDING = 50_000

Writer = t.Callable[[list[PullEntry]], object]


class PullAudit:
    """A thread-safe buffer of pull entries for one process.

    :param on_lost: called with the number of entries dropped (a metric).
    """

    def __init__(
        self,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        max_pending: int = MAX_PENDING,
        monotonic: t.Callable[[], float] = time.monotonic,
        on_lost: t.Callable[[int], None] = lambda count: None,
    ) -> None:
        self._flush_seconds = flush_seconds
        self._monotonic = monotonic
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._pending: collections.deque[PullEntry] = collections.deque(maxlen=max_pending)
        self._last_flush = monotonic() - flush_seconds
        #: Entries dropped because the buffer was full.
        self.dropped = 0

    def add(self, entry: PullEntry) -> None:
        """One manifest pull."""
        with self._lock:
            full = len(self._pending) == self._pending.maxlen
            self._pending.append(entry)
            if full:
                self.dropped += 1
        if full:
            self._on_lost(1)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush_due(self) -> bool:
        """Whether :meth:`flush` has something to write now."""
        with self._lock:
            elapsed = self._monotonic() - self._last_flush
            return bool(self._pending) and elapsed >= self._flush_seconds

    def flush(self, writer: Writer, force: bool = False) -> int:
        """Hand the buffered entries to ``writer`` in one batch; returns how many.

        When ``writer`` raises, the entries stay buffered and the error propagates.
        """
        with self._lock:
            elapsed = self._monotonic() - self._last_flush
            if not self._pending or not (force or elapsed >= self._flush_seconds):
                return 0
            batch = list(self._pending)
            self._pending.clear()
            self._last_flush = self._monotonic()
        try:
            writer(batch)
        except BaseException:
            self._restore(batch)
            raise
        return len(batch)

    def _restore(self, batch: list[PullEntry]) -> None:
        with self._lock:
            newer = list(self._pending)
            self._pending.clear()
            room = t.cast(int, self._pending.maxlen)
            kept = (batch + newer)[-room:]
            lost = len(batch) + len(newer) - len(kept)
            self._pending.extend(kept)
            self.dropped += lost
        if lost:
            self._on_lost(lost)
