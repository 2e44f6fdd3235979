"""The usage buffer: counts per group and day, batched flushes, failed flushes kept."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from flask_dependency_proxy.cache.results import Outcome
from flask_dependency_proxy.cache.usage import UsageBuffer
from flask_dependency_proxy.models.usage import DayCounts, Key

DAY = dt.date(2026, 12, 6)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_counts_by_outcome_and_day() -> None:
    day = [DAY]
    buffer = UsageBuffer(today=lambda: day[0], flush_seconds=0)
    buffer.count_pull(1, Outcome.MISS)
    buffer.count_pull(1, Outcome.HIT)
    buffer.count_pull(1, Outcome.REVALIDATED)
    buffer.count_pull(1, Outcome.STALE)
    buffer.count_bytes(1, Outcome.MISS, 100)
    buffer.count_bytes(1, Outcome.HIT, 40)
    day[0] = DAY + dt.timedelta(days=1)
    buffer.count_pull(2, Outcome.HIT)
    written: list[dict[Key, DayCounts]] = []
    assert buffer.flush(written.append) == 2
    assert written == [
        {
            (1, DAY): DayCounts(3, 1, 40, 100),
            (2, DAY + dt.timedelta(days=1)): DayCounts(1, 0, 0, 0),
        }
    ]
    assert buffer.flush(written.append, force=True) == 0


def test_flush_waits_for_its_interval() -> None:
    clock = Clock()
    buffer = UsageBuffer(today=lambda: DAY, monotonic=clock, flush_seconds=10)
    buffer.count_pull(1, Outcome.HIT)
    assert not buffer.flush_due()
    assert buffer.flush(lambda batch: None) == 0
    clock.now = 10
    assert buffer.flush_due()
    assert buffer.flush(lambda batch: None) == 1
    assert not buffer.flush_due()


def test_failed_flush_keeps_the_counts() -> None:
    buffer = UsageBuffer(today=lambda: DAY, flush_seconds=0)
    buffer.count_pull(1, Outcome.MISS)

    def broken(batch: object) -> None:
        buffer.count_pull(1, Outcome.MISS)  # a request during the failing write
        raise OSError("database down")

    with pytest.raises(OSError):
        buffer.flush(broken)
    written: list[dict[Key, DayCounts]] = []
    buffer.flush(written.append)
    assert written == [{(1, DAY): DayCounts(pulls_upstream=2)}]


def test_threads_lose_no_count() -> None:
    buffer = UsageBuffer(today=lambda: DAY, flush_seconds=0)

    def pull() -> None:
        for _ in range(1000):
            buffer.count_bytes(1, Outcome.HIT, 1)

    threads = [threading.Thread(target=pull) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written: list[dict[Key, DayCounts]] = []
    buffer.flush(written.append)
    assert written[0][(1, DAY)].bytes_cached == 4000
