"""Rows of ``dependency_proxy_group_paths``: the path each group id named when the
extension first saw it (forgetting a group deletes its row with the rest of its data:
:meth:`.cleanup.CleanupRecords.forget_group`).

The decisions (is this still the same group, may this path be recorded) are
:mod:`..auth.group_paths`'; here are only the reads and writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa

from .records import SessionRecords
from .tables import GroupPath
from .transaction import commit_retrying


@dataclasses.dataclass(frozen=True)
class RecordedPath:
    """A group id and the path it named (case kept)."""

    group_id: int
    path: str


class GroupPathRecords(SessionRecords):
    """The recorded paths, through the host's session."""

    def get(self, group_id: int) -> RecordedPath | None:
        row = self.session.get(GroupPath, group_id)
        return None if row is None else RecordedPath(int(row.group_id), row.path)

    def holders(self, path: str, *, besides: int) -> list[RecordedPath]:
        """Other group ids recorded with ``path`` (compared lowercased)."""
        rows = self.session.execute(
            sa.select(GroupPath.group_id, GroupPath.path)
            .where(GroupPath.path_lower == path.lower(), GroupPath.group_id != besides)
            .order_by(GroupPath.group_id)
        )
        return [RecordedPath(int(group_id), found) for group_id, found in rows]

    def record(self, group_id: int, path: str, now: dt.datetime) -> RecordedPath:
        """Record the group's path, or change it (a rename confirmed), and commit.

        Two first records of one group at once both write the path the host gave.
        """

        def write() -> RecordedPath:
            row = self.session.get(GroupPath, group_id)
            if row is None:
                row = GroupPath(group_id=group_id, path=path, path_lower=path.lower())
                row.recorded_at = now
                self.session.add(row)
            else:
                row.path, row.path_lower, row.recorded_at = path, path.lower(), now
            self.session.flush()
            return RecordedPath(group_id, path)

        return commit_retrying(self.session, write, what=f"the path of group {group_id}")
