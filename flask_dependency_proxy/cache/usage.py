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

from ..models.hot_tags import ReferenceKey
from ..models.usage import DayCounts, Key

#: Seconds between two flushes of one process's buffer.
FLUSH_SECONDS = 10.0


class _Outcome(t.Protocol):
    @property
    def from_cache(self) -> bool: ...


Writer = t.Callable[[dict[Key, DayCounts]], object]
ReferenceWriter = t.Callable[[dict[ReferenceKey, int]], object]


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
        self._references: dict[ReferenceKey, int] = {}
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

    def count_reference(self, group_id: int, image: str, reference: str) -> None:
        """One manifest GET of ``image`` by ``reference`` (a tag, or a digest: the
        platform an index's pull chose): what ranks the tags the refresher keeps warm."""
        key = (group_id, image, reference, self._today())
        with self._lock:
            self._references[key] = self._references.get(key, 0) + 1

    def _add(self, group_id: int, counts: DayCounts) -> None:
        key = (group_id, self._today())
        with self._lock:
            self._pending.setdefault(key, DayCounts()).add(counts)

    def drop(self, group_id: int) -> None:
        """Forget the counts buffered for a group (a group the host deleted)."""
        with self._lock:
            for key in [key for key in self._pending if key[0] == group_id]:
                del self._pending[key]
            for ref in [ref for ref in self._references if ref[0] == group_id]:
                del self._references[ref]

    def flush_due(self) -> bool:
        """Whether :meth:`flush` has something to write now."""
        with self._lock:
            elapsed = self._monotonic() - self._last_flush
            pending = bool(self._pending or self._references)
            return pending and elapsed >= self._flush_seconds

    def flush(
        self,
        writer: Writer,
        force: bool = False,
        references: ReferenceWriter | None = None,
    ) -> int:
        """Hand the buffered counters to ``writer`` in one batch, and the reference
        counts to ``references`` (kept buffered without one); returns the rows handed.

        When a writer raises, what it was handed stays buffered and the error propagates.
        """
        with self._lock:
            elapsed = self._monotonic() - self._last_flush
            refs_due = references is not None and bool(self._references)
            if not (self._pending or refs_due) or not (force or elapsed >= self._flush_seconds):
                return 0
            pending, self._pending = self._pending, {}
            refs: dict[ReferenceKey, int] = {}
            if references is not None:
                refs, self._references = self._references, {}
            self._last_flush = self._monotonic()
        try:
            if pending:
                writer(pending)
        except BaseException:
            self._restore(pending, refs)
            raise
        try:
            if refs and references is not None:
                references(refs)
        except BaseException:
            self._restore({}, refs)
            raise
        return len(pending) + len(refs)

    def _restore(self, pending: dict[Key, DayCounts], refs: dict[ReferenceKey, int]) -> None:
        with self._lock:
            for key, counts in pending.items():
                self._pending.setdefault(key, DayCounts()).add(counts)
            for ref, pulls in refs.items():
                self._references[ref] = self._references.get(ref, 0) + pulls
