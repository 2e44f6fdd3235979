"""A job that one process of the fleet runs at a time (cleanup, predictive refresh),
under a named row of the leases table (:class:`~.cleanup.CleanupRecords`)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import socket
import typing as t
import uuid


class NamedLeases(t.Protocol):
    """The named leases of :class:`~.cleanup.CleanupRecords`."""

    def acquire_lease(
        self,
        name: str,
        holder: str,
        now: dt.datetime,
        ttl: dt.timedelta,
        *,
        min_interval: dt.timedelta | None = None,
    ) -> bool: ...

    def renew_lease(self, name: str, holder: str, now: dt.datetime, ttl: dt.timedelta) -> bool: ...

    def release_lease(
        self, name: str, holder: str, now: dt.datetime, *, finished: bool
    ) -> None: ...


@dataclasses.dataclass(frozen=True)
class HeldLease:
    """A lease this process holds; a long job renews it as it goes, so a process that
    dies mid-run frees it ``ttl`` after its last renewal."""

    leases: NamedLeases
    name: str
    holder: str
    ttl: dt.timedelta
    clock: t.Callable[[], dt.datetime]

    def renew(self) -> None:
        self.leases.renew_lease(self.name, self.holder, self.clock(), self.ttl)


@contextlib.contextmanager
def held_lease(
    leases: NamedLeases,
    name: str,
    *,
    ttl: dt.timedelta,
    clock: t.Callable[[], dt.datetime],
    min_interval: dt.timedelta | None = None,
) -> t.Iterator[HeldLease | None]:
    """Hold the lease ``name`` for the block, released (with the time the job finished)
    when the block ends however it ends; ``None`` when another process holds it or,
    with ``min_interval``, when the job finished less than that long ago."""
    holder = process_holder()
    if not leases.acquire_lease(name, holder, clock(), ttl, min_interval=min_interval):
        yield None
        return
    try:
        yield HeldLease(leases, name, holder, ttl, clock)
    finally:
        leases.release_lease(name, holder, clock(), finished=True)


def process_holder() -> str:
    """A name for this process in a lease row: unique across hosts, processes and runs,
    and telling an operator which host and process holds the lease."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
