"""Rows of ``dependency_proxy_usage_days``: a batch of counters written in one upsert,
and a group's days read back for its page and the API.

The value types (:class:`DayCounts`, :data:`Key`) live here, below the in-memory buffer
that counts them (:mod:`..cache.usage`) and the chart that draws them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t

import sqlalchemy as sa

from .tables import UsageDay
from .upsert import insert_for

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

_COLUMNS = ("pulls_cached", "pulls_upstream", "bytes_cached", "bytes_upstream")


@dataclasses.dataclass
class DayCounts:
    """The counters of one group on one UTC day."""

    pulls_cached: int = 0
    pulls_upstream: int = 0
    bytes_cached: int = 0
    bytes_upstream: int = 0

    def add(self, other: DayCounts) -> None:
        self.pulls_cached += other.pulls_cached
        self.pulls_upstream += other.pulls_upstream
        self.bytes_cached += other.bytes_cached
        self.bytes_upstream += other.bytes_upstream


#: A group and a UTC day.
Key = tuple[int, dt.date]


def write_usage(session: Session, batch: dict[Key, DayCounts]) -> None:
    """Add ``batch`` to the stored days in one statement, then commit."""
    if not batch:
        return
    insert = insert_for(session.get_bind(mapper=UsageDay).dialect.name)
    statement = insert(UsageDay).values(
        [
            {"group_id": group_id, "day": day, **{c: getattr(counts, c) for c in _COLUMNS}}
            for (group_id, day), counts in sorted(batch.items())
        ]
    )
    table = UsageDay.__table__
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.group_id, table.c.day],
        set_={c: table.c[c] + statement.excluded[c] for c in _COLUMNS},
    )
    try:
        session.execute(statement)
        session.commit()
    except BaseException:
        session.rollback()
        raise


def read_usage(session: Session, group_id: int, since: dt.date) -> dict[dt.date, DayCounts]:
    """The group's stored days from ``since`` on."""
    rows = session.execute(
        sa.select(UsageDay).where(UsageDay.group_id == group_id, UsageDay.day >= since)
    ).scalars()
    return {row.day: DayCounts(*(getattr(row, c) for c in _COLUMNS)) for row in rows}
