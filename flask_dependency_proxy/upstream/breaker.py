"""When the upstream client asks nothing of an upstream: while it counts as down, and
while a ``429`` asked it to wait.

After ``failures`` connection failures in a row the upstream counts as down for
``seconds``: requests fail at once (cached tags are served stale) instead of each waiting
for its connect timeout, then the next request tries again; each failed try doubles the
wait, up to ``max_seconds`` (:class:`CircuitBreaker`, shared by the clients of one
upstream). After a ``429`` whose ``Retry-After`` is longer than a client request can wait,
the client asks nothing of the upstream until that time has passed
(:class:`RetryAfterHold`, one per client, so per credential).
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
import typing as t

from ..oci.digits import ascii_int
from .errors import UpstreamRateLimited

log = logging.getLogger(__name__)

#: Connection failures in a row after which the upstream counts as down.
BREAKER_FAILURES = 3
#: How long a down upstream is not asked before the next request tries again.
BREAKER_SECONDS = 5.0
#: The longest such wait, however often the upstream failed again.
BREAKER_MAX_SECONDS = 300.0
#: Longest ``Retry-After`` honoured inside a single client request.
MAX_RETRY_WAIT_SECONDS = 2.0
#: Longest ``Retry-After`` honoured between client requests (a day).
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0


class CircuitBreaker:
    """Counts connection failures in a row; after ``failures`` of them, :meth:`allows`
    answers no for ``seconds``, then lets requests try again. One more failure opens it
    again at once, for twice as long each time, up to ``max_seconds``; a success closes
    it and forgets the failures."""

    def __init__(
        self,
        failures: int,
        seconds: float,
        *,
        max_seconds: float | None = None,
        clock: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.seconds = seconds
        self.max_seconds = max(seconds, max_seconds if max_seconds is not None else seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._in_a_row = 0
        self._open_until = 0.0

    def allows(self) -> bool:
        return self.failures <= 0 or self._clock() >= self._open_until

    def open_until(self) -> float | None:
        """Seconds since the epoch until which the upstream is not asked, or ``None``."""
        left = self._open_until - self._clock()
        return time.time() + left if left > 0 and self.failures > 0 else None

    def failed(self) -> None:
        with self._lock:
            self._in_a_row += 1
            if self.failures <= 0 or self._in_a_row < self.failures:
                return
            doublings = min(self._in_a_row - self.failures, 30)
            wait = min(self.seconds * 2**doublings, self.max_seconds)
            if self._clock() >= self._open_until:
                log.warning(
                    "upstream failed to connect %s times in a row; not asked for %.0f s",
                    self._in_a_row,
                    wait,
                )
            self._open_until = self._clock() + wait

    def succeeded(self) -> None:
        with self._lock:
            self._in_a_row = 0
            self._open_until = 0.0


class RetryAfterHold:
    """Holds requests back after a ``429`` whose ``Retry-After`` is longer than a client
    request waits itself (at most :data:`MAX_RETRY_AFTER_SECONDS`).

    :param origin: the upstream's origin, for messages.
    """

    def __init__(self, origin: str) -> None:
        self.origin = origin
        #: ``time.monotonic()`` until which requests are held back.
        self._until = 0.0

    def holding(self) -> bool:
        return self._until > time.monotonic()

    def until(self) -> float | None:
        """Seconds since the epoch until which requests are held back, or ``None``."""
        left = self._until - time.monotonic()
        return time.time() + left if left > 0 else None

    def check(self, path: str) -> None:
        """:raises UpstreamRateLimited: requests are held back (with the seconds left)."""
        left = self._until - time.monotonic()
        if left > 0:
            raise UpstreamRateLimited(
                f"upstream {self.origin} asked to wait {left:.0f} s more; not asked for {path}",
                status=429,
                retry_after=str(int(left) + 1),
            )

    def note(self, retry_after: str | None) -> None:
        """Hold requests back for a ``429``'s ``Retry-After``, when it is longer than a
        request waits itself."""
        seconds = retry_after_seconds(retry_after, now=time.time())
        if seconds is None or seconds <= MAX_RETRY_WAIT_SECONDS:
            return
        seconds = min(seconds, MAX_RETRY_AFTER_SECONDS)
        log.warning("upstream %s answered 429; not asked for %.0f s", self.origin, seconds)
        self._until = max(self._until, time.monotonic() + seconds)


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` (seconds or an HTTP date) asks for."""
    value = (value or "").strip()
    seconds = ascii_int(value)
    if seconds is not None:
        return float(seconds)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(moment.timestamp() - now, 0.0)
