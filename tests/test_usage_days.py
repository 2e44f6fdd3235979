"""Usage counters reach ``dependency_proxy_usage_days`` in one upsert per batch, on
SQLite and PostgreSQL, adding to what earlier batches wrote."""

from __future__ import annotations

import datetime as dt

from flask import Flask

from flask_dependency_proxy.cache.results import Outcome
from flask_dependency_proxy.cache.usage import UsageBuffer
from flask_dependency_proxy.models.usage import DayCounts, read_usage, write_usage

DAY = dt.date(2026, 12, 6)


def test_batches_add_up_per_group_and_day(app: Flask) -> None:
    db = app.extensions["sqlalchemy"]
    buffer = UsageBuffer(today=lambda: DAY, flush_seconds=0)
    with app.app_context():
        buffer.count_pull(1, Outcome.MISS)
        buffer.count_bytes(1, Outcome.MISS, 500)
        buffer.count_pull(2, Outcome.HIT)
        assert buffer.flush(lambda batch: write_usage(db.session, batch)) == 2
        buffer.count_pull(1, Outcome.HIT)
        buffer.count_bytes(1, Outcome.HIT, 500)
        assert buffer.flush(lambda batch: write_usage(db.session, batch)) == 1

        assert read_usage(db.session, 1, DAY) == {DAY: DayCounts(1, 1, 500, 500)}
        assert read_usage(db.session, 2, DAY) == {DAY: DayCounts(pulls_cached=1)}
        assert read_usage(db.session, 1, DAY + dt.timedelta(days=1)) == {}
