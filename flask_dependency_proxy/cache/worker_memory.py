"""What one worker remembers about blobs between requests, beside the database: bounded
sets that cost nothing to lose (a new worker starts without them).

- :class:`RecentBlobs`: while the database is unavailable, a blob this worker recently
  served or recorded for the group is still served from the store.
- :class:`UnreadableBlobs`: a blob a row names but the store no longer holds is asked of
  the store again, not trusted from the row.
"""

from __future__ import annotations

import collections
import threading

#: (group, digest) pairs remembered per worker for pulls during a database outage.
RECENT_BLOBS = 10_000


class RecentBlobs:
    """The blobs this worker recently served or recorded, per group: a bounded LRU set.

    Only consulted when the database cannot say whether a group holds a blob.
    """

    def __init__(self, max_entries: int = RECENT_BLOBS) -> None:
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[tuple[int, str], None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, group_id: int, digest: str) -> None:
        key = (group_id, digest)
        with self._lock:
            self._entries[key] = None
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __contains__(self, key: tuple[int, str]) -> bool:
        with self._lock:
            return key in self._entries


class UnreadableBlobs:
    """Digests whose committed blob was found missing when opened; bounded (a flood of
    missing blobs only costs each a store request again)."""

    def __init__(self, max_entries: int = 1000) -> None:
        self.max_entries = max_entries
        self._digests: set[str] = set()
        self._lock = threading.Lock()

    def add(self, digest: str) -> None:
        with self._lock:
            if len(self._digests) >= self.max_entries:
                self._digests.clear()
            self._digests.add(digest)

    def discard(self, digest: str) -> None:
        with self._lock:
            self._digests.discard(digest)

    def __contains__(self, digest: str) -> bool:
        return digest in self._digests
