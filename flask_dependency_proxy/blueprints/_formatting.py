"""How the group pages and the REST API show a group's values: its pull prefix, its size
limit, times and durations."""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t
from urllib.parse import urlsplit

from ..cache.quota import exact_size
from ._registry_http import external_url

if t.TYPE_CHECKING:
    from ..host import Group

#: The path segment that separates the group from the image in a pull reference.
PREFIX_SUFFIX = "dependency_proxy/containers"


def image_prefix(group: Group) -> str:
    """``host:port/<group>/dependency_proxy/containers``, what clients put before an image
    (lowercase, as image names are, whatever the case of the group's path)."""
    return f"{urlsplit(external_url()).netloc}/{group.full_path.lower()}/{PREFIX_SUFFIX}"


def format_time(moment: dt.datetime | None) -> str:
    return "—" if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"


def format_duration(seconds: float) -> str:
    """``3600`` → ``"1 hour"``, ``90`` → ``"90 seconds"``."""
    whole = int(seconds)
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if whole >= size and whole % size == 0:
            count = whole // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{whole} second{'' if whole == 1 else 's'}"


@dataclasses.dataclass(frozen=True)
class QuotaView:
    """The group's size limit as the page shows it.

    :param limit: bytes, ``None`` for no limit; ``field`` is how the form shows it.
    :param used: bytes of manifests and blobs the group has cached.
    :param policy: ``evict`` or ``refuse``, the instance's setting.
    """

    limit: int | None
    used: int
    policy: str

    @property
    def field(self) -> str:
        return "" if self.limit is None else exact_size(self.limit)

    @property
    def percent(self) -> int | None:
        return None if not self.limit else min(999, self.used * 100 // self.limit)
