"""A route's word that it serves a digest, remembered per worker.

A group gets a blob it does not hold only on its own route's word: its own fetch opened
it upstream (:class:`BlobOpener`), or a ``HEAD`` with its credential confirmed the
digest (:meth:`Confirmations.confirm`). Two groups share a route only when they would
send the very same request upstream (:func:`route_key`). What a route confirmed is
remembered per worker for a while, so a herd costs about one ``HEAD`` per route and
worker.
"""

from __future__ import annotations

import collections
import threading
import time
import typing as t

from ..single_flight import SingleFlight
from ..upstream.credentials import credential_id
from ..upstream.registry import BlobStream
from ..upstream.routing import Candidate
from .routes import first_that_has

#: (route, digest) confirmations remembered per worker.
CONFIRMATIONS = 10_000
#: Seconds a route's word that it serves a digest is trusted without asking again.
CONFIRMATION_SECONDS = 300.0

#: What decides whether an upstream serves a digest to a group: the entry, its URL, the
#: repository there and the credential used (by :func:`~.upstream.credentials.credential_id`, as
#: the upstream clients themselves are told apart).
RouteKey = tuple[str, str, str, str]


def route_key(candidate: Candidate) -> RouteKey:
    """The key of one candidate: two groups share it only when they would send the very
    same request upstream (same entry, repository and credential)."""
    client = candidate.client
    return (
        candidate.name,
        client.base_url,
        candidate.repository,
        credential_id(client.credentials),
    )


class Confirmations:
    """The digests routes confirmed lately in this worker, by a ``HEAD`` or by opening
    the blob: a bounded, expiring set, with one ``HEAD`` at a time per route and digest
    (a herd of one group waits for the first one's answer instead of asking again)."""

    def __init__(
        self,
        max_entries: int = CONFIRMATIONS,
        seconds: float = CONFIRMATION_SECONDS,
        clock: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.seconds = seconds
        self._clock = clock
        self._until: collections.OrderedDict[tuple[RouteKey, str], float] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._single_flight = SingleFlight()

    def add(self, key: RouteKey, digest: str) -> None:
        """Remember that the route ``key`` serves ``digest``."""
        entry = (key, digest)
        with self._lock:
            self._until[entry] = self._clock() + self.seconds
            self._until.move_to_end(entry)
            while len(self._until) > self.max_entries:
                self._until.popitem(last=False)

    def confirmed(self, keys: t.Iterable[RouteKey], digest: str) -> bool:
        """Whether one of the routes ``keys`` confirmed ``digest`` lately."""
        now = self._clock()
        with self._lock:
            for key in keys:
                until = self._until.get((key, digest))
                if until is None:
                    continue
                if until > now:
                    return True
                del self._until[(key, digest)]
        return False

    def confirm(self, candidates: t.Sequence[Candidate], digest: str) -> bool:
        """Make sure one of ``candidates`` serves ``digest``: remembered, or a ``HEAD``
        down the list (shared by concurrent callers with the same list). ``True`` when
        it was not remembered: the answer took a round trip upstream.

        :raises UpstreamNotFound: none of them serves it.
        :raises UpstreamError: the route could not answer.
        """
        keys = tuple(route_key(candidate) for candidate in candidates)
        if self.confirmed(keys, digest):
            return False

        def ask() -> None:
            if self.confirmed(keys, digest):
                return
            _, source = first_that_has(
                candidates, lambda c: c.client.head_blob(c.repository, digest)
            )
            self.add(route_key(source), digest)

        self._single_flight.do((keys, digest), ask)
        return True


class BlobOpener:
    """Opens a blob at the first upstream that has it, and resumes it at the same one.

    What it opens counts as the route's confirmation of the digest (``confirmations``).
    """

    def __init__(
        self,
        candidates: t.Sequence[Candidate],
        digest: str,
        confirmations: Confirmations | None = None,
    ) -> None:
        self._candidates = tuple(candidates)
        self._digest = digest
        self._confirmations = confirmations
        self._source: Candidate | None = None
        #: A fetch called it: its outcome is the route's own answer.
        self.attempted = False

    @property
    def opened(self) -> bool:
        """Upstream served the blob to this route (through this opener, not a peer's)."""
        return self._source is not None

    def __call__(self, offset: int) -> BlobStream:
        if self._source is not None:
            return self._source.client.open_blob(self._source.repository, self._digest, offset)
        self.attempted = True
        stream, source = first_that_has(
            self._candidates, lambda c: c.client.open_blob(c.repository, self._digest, offset)
        )
        if self._confirmations is not None:
            self._confirmations.add(route_key(source), self._digest)
        self._source = source
        return stream
