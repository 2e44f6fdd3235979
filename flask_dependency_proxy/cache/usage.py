"""What the cache saves per group and UTC day, counted in memory and written in batches.

Registry views add one pull to the buffer; nothing here writes to the database per
request. A flush takes the buffered counts away and hands them to a writer; when the
writer fails, the counts go back into the buffer for the next flush. Counts a process
holds when it dies are lost: the figures are for a chart, not for billing.

This module knows no Flask, SQL or HTTP.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import typing as t

from ..models.usage import DayCounts, Key

#: Seconds between two flushes of one process's buffer.
FLUSH_SECONDS = 10.0


class _Outcome(t.Protocol):
    @property
    def from_cache(self) -> bool: ...


Writer = t.Callable[[dict[Key, DayCounts]], object]


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


class UsageBuffer:
    """A thread-safe buffer of usage counters for one process.

    :param today: the current UTC day (injected so tests control the clock).
    :param monotonic: the clock that spaces flushes.
    """

    def __init__(
        self,
        *,
        today: t.Callable[[], dt.date] = _utc_today,
        monotonic: t.Callable[[], float] = time.monotonic,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self._today = today
        self._monotonic = monotonic
        self._flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._pending: dict[Key, DayCounts] = {}
        self._last_flush = monotonic()

    def count_pull(self, group_id: int, outcome: _Outcome) -> None:
        """One manifest GET: served from the cache or fetched upstream."""
        cached = outcome.from_cache
        self._add(group_id, DayCounts(pulls_cached=int(cached), pulls_upstream=int(not cached)))

    def count_bytes(self, group_id: int, outcome: _Outcome, nbytes: int) -> None:
        """One blob GET of ``nbytes``: served from the cache or fetched upstream."""
        nbytes = max(0, nbytes)
        if outcome.from_cache:
            self._add(group_id, DayCounts(bytes_cached=nbytes))
        else:
            self._add(group_id, DayCounts(bytes_upstream=nbytes))

    def _add(self, group_id: int, counts: DayCounts) -> None:
        key = (group_id, self._today())
        with self._lock:
            self._pending.setdefault(key, DayCounts()).add(counts)

    def drop(self, group_id: int) -> None:
        """Forget the counts buffered for a group (a group the host deleted)."""
        with self._lock:
            for key in [key for key in self._pending if key[0] == group_id]:
                del self._pending[key]

    def flush_due(self) -> bool:
        """Whether :meth:`flush` has something to write now."""
        with self._lock:
            elapsed = self._monotonic() - self._last_flush
            return bool(self._pending) and elapsed >= self._flush_seconds

    def flush(self, writer: Writer, force: bool = False) -> int:
        """Hand the buffered counters to ``writer`` in one batch; returns the rows handed.

        When ``writer`` raises, the counters stay buffered and the error propagates.
        """
        with self._lock:
            elapsed = self._monotonic() - self._last_flush
            if not self._pending or not (force or elapsed >= self._flush_seconds):
                return 0
            pending, self._pending = self._pending, {}
            self._last_flush = self._monotonic()
        try:
            writer(pending)
        except BaseException:
            self._restore(pending)
            raise
        return len(pending)

    def _restore(self, pending: dict[Key, DayCounts]) -> None:
        with self._lock:
            for key, counts in pending.items():
                self._pending.setdefault(key, DayCounts()).add(counts)
