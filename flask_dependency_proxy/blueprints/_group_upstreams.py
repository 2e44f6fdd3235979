"""A group's upstream registries as its page and the REST API show them: the group's
order and credentials (from the database) beside each upstream's URL and what this
process last saw of it (from the instance's :class:`~..upstreams.UpstreamSet`).

Shared by :mod:`.pages` and :mod:`.api`; never carries a secret out of here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from .._state import state
from ..models.upstreams import GroupUpstreamRecords

#: What an upstream name in a URL or a form must look like before it is looked up
#: (the grammar of the names in ``DEPENDENCY_PROXY_UPSTREAMS``).
UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclasses.dataclass(frozen=True)
class UpstreamView:
    """One instance upstream for one group.

    :param position: 1-based place in the group's order; ``None``: the group does not use it.
    :param last_status: HTTP status of the last answer this process saw with the
        group's credential (``None``: none yet, or the last request did not connect).
    :param down_until: until when the upstream is not asked (outage backoff or a
        ``429``'s ``Retry-After``); ``None`` when it is asked.
    """

    name: str
    url: str
    hosts: tuple[str, ...]
    position: int | None
    credential_set: bool
    credential_unreadable: bool
    last_status: int | None
    rate_limit_limit: int | None
    rate_limit_remaining: int | None
    down_until: dt.datetime | None

    @property
    def used(self) -> bool:
        return self.position is not None


@dataclasses.dataclass(frozen=True)
class GroupUpstreamsView:
    custom_order: bool
    upstreams: tuple[UpstreamView, ...]

    def find(self, name: str) -> UpstreamView | None:
        return next((u for u in self.upstreams if u.name == name), None)


def records() -> GroupUpstreamRecords:
    return state(None).group_upstreams


def instance_names() -> list[str]:
    """The instance's upstreams, in the instance's order."""
    return state(None).upstreams.names()


def group_view(group_id: int) -> GroupUpstreamsView:
    """Every instance upstream for the group: those it uses first, in its order."""
    upstreams = state(None).upstreams
    names = upstreams.names()
    found = records()
    listing = found.listing(group_id, names)
    own = {
        entry.name: (entry.username, entry.password)
        for entry in found.ordered(group_id, names)
        if entry.username is not None and entry.password is not None
    }
    views = []
    for item in listing.items:
        entry = upstreams.entry(item.name)
        status = upstreams.status(item.name, own.get(item.name))
        views.append(
            UpstreamView(
                name=item.name,
                url=entry.url,
                hosts=tuple(entry.hosts),
                position=item.position,
                credential_set=item.credential_set,
                credential_unreadable=item.credential_unreadable,
                last_status=status.last_status,
                rate_limit_limit=status.rate_limit_limit,
                rate_limit_remaining=status.rate_limit_remaining,
                down_until=(
                    None
                    if status.down_until is None
                    else dt.datetime.fromtimestamp(status.down_until, dt.UTC).replace(tzinfo=None)
                ),
            )
        )
    return GroupUpstreamsView(listing.custom_order, tuple(views))
