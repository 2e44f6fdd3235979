"""Whether a group id still names the group the extension knew: the path recorded for
each id, and the two answers a host gives when it does not.

Every table of the extension keys its rows by the host's group id. A host may give a
deleted group's id to a new group (SQLite does, for an ``INTEGER PRIMARY KEY``), and
the new group would then inherit the old one's settings, cache, size limit and
upstream credentials. So the extension records the path each id named when it first
saw it (a pull whose grant is not remembered, a page, an API call, a command), and
refuses a group whose id now names another path, compared lowercased as image names
are, until the host says which it is:

- ``confirm_group(id)``: the same group, renamed; the new path is recorded.
- ``forget_group(id)``: the old group was deleted (and its id reused); everything the
  extension kept for it is dropped (:meth:`..admin.groups.GroupAdmin.forget_group`).

Image names are lowercase, so two groups whose paths differ only by case would pull
under one name: a path whose lowercased form another group id holds is not recorded,
and such a group may not have its proxy switched on or its settings saved (nor pull)
until one of them is renamed, or the other, deleted, is forgotten.
"""

from __future__ import annotations

import typing as t

from ..models.tables import utcnow

if t.TYPE_CHECKING:
    import datetime as dt

    from ..host import Group
    from ..models.group_paths import GroupPathRecords, RecordedPath


class FindsGroups(t.Protocol):
    """What is asked of the host (:meth:`~..host.HostAdapter.find_group_by_id`)."""

    def find_group_by_id(self, group_id: int) -> Group | None: ...


class GroupPathProblem(Exception):
    """A group the extension must not serve until the host says what became of it; the
    message says what the host calls."""


class GroupMoved(GroupPathProblem):
    """The group's id was recorded with another path.

    :param recorded: the path recorded for the id.
    :param current: the path the host gives for it now.
    """

    def __init__(self, group_id: int, recorded: str, current: str) -> None:
        super().__init__(
            f"group id {group_id} was recorded with the path '{recorded}' and now names"
            f" '{current}': if it is the same group, renamed, the host calls"
            f" proxy.confirm_group({group_id}) (or `flask dependency-proxy confirm-group"
            f" {group_id}`); if '{recorded}' was deleted and its id given to a new group, the"
            f" host calls proxy.forget_group({group_id}) (or `flask dependency-proxy"
            f" forget-group {group_id}`), which drops the old group's proxy settings and cache"
        )
        self.group_id = group_id
        self.recorded = recorded
        self.current = current


class GroupPathTaken(GroupPathProblem):
    """Another group id holds the group's path, compared lowercased.

    :param holder_gone: the host no longer has the holder (deleted, not forgotten).
    """

    def __init__(self, group: Group, holder: RecordedPath, *, holder_gone: bool) -> None:
        message = (
            f"the path '{group.full_path}' of group id {group.id} is, ignoring case, the path"
            f" '{holder.path}' recorded for group id {holder.group_id}; image names are"
            " lowercase, so two such groups cannot both use the dependency proxy"
        )
        if holder_gone:
            message += (
                f": group id {holder.group_id} no longer exists; if it was deleted, the host"
                f" calls proxy.forget_group({holder.group_id}) (or `flask dependency-proxy"
                f" forget-group {holder.group_id}`)"
            )
        else:
            message += ": rename one of them"
        super().__init__(message)
        self.group = group
        self.holder = holder


class GroupPaths:
    """Checks and records the path of each group id.

    :param records: the recorded paths.
    :param host: asked whether a group holding a path still has it.
    :param clock: naive UTC now.
    """

    def __init__(
        self,
        records: GroupPathRecords,
        host: FindsGroups,
        *,
        clock: t.Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._records = records
        self._host = host
        self._clock = clock

    def admit(self, group: Group, *, claim: bool) -> None:
        """Check that the group's id still names its recorded path; record it the first
        time the group is seen. One read once recorded.

        :param claim: the group is about to use the proxy (a pull, a settings change):
            refuse a path another group holds instead of leaving it unrecorded.
        :raises GroupMoved: the id was recorded with another path.
        :raises GroupPathTaken: ``claim``, and another group holds the path.
        """
        recorded = self._records.get(group.id)
        if recorded is not None:
            if recorded.path.lower() != group.full_path.lower():
                raise GroupMoved(group.id, recorded.path, group.full_path)
            return
        taken = self._taken(group)
        if taken is not None:
            if claim:
                raise taken
            return
        self._records.record(group.id, group.full_path, self._clock())

    def confirm(self, group: Group) -> str | None:
        """Record the group's current path: the host says it is the same group, renamed.

        :return: the path recorded before, ``None`` if there was none.
        :raises GroupPathTaken: another group holds the path.
        """
        taken = self._taken(group)
        if taken is not None:
            raise taken
        previous = self._records.get(group.id)
        self._records.record(group.id, group.full_path, self._clock())
        return None if previous is None else previous.path

    def _taken(self, group: Group) -> GroupPathTaken | None:
        """Another group id recorded with the group's path, unless the host says that
        group has another path now (renamed: its own record is refused until confirmed)."""
        for holder in self._records.holders(group.full_path, besides=group.id):
            current = self._host.find_group_by_id(holder.group_id)
            if current is None:
                return GroupPathTaken(group, holder, holder_gone=True)
            if current.full_path.lower() == group.full_path.lower():
                return GroupPathTaken(group, holder, holder_gone=False)
        return None
