"""Fetch leases: which host of the fleet fetches a digest from upstream.

Within a host, the lock files of :mod:`.host_lock` elect the one process that fetches a
digest. That process then claims the digest's row in ``dependency_proxy_fetch_leases``
(:class:`FetchLeases`): the first host to claim it fetches from upstream; every other
host reads the bytes from the fetching host (:mod:`.fleet`).

A claim is one short statement (``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the
lease expired): no connection or transaction is held across a transfer. The holding
process renews its leases every few seconds from one thread, with one ``UPDATE`` for
all of them. A host that dies stops renewing; once its lease is older than
``FETCH_LEASE_SECONDS`` the next host that needs the blob takes it over.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import threading
import time
import typing as t

import sqlalchemy as sa

from ..models.job_lease import process_holder
from ..models.tables import FetchLease, utcnow
from ..models.upsert import insert_for

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Claim:
    """The outcome of claiming a digest: ours to fetch, or the host that fetches it."""

    ours: bool
    peer_url: str | None = None


class FetchLeases:
    """The fetch leases of this process, kept in the host's database.

    :param engine: the database engine (called, so it can be resolved lazily).
    :param peer_url: this host's base URL as other hosts reach it.
    :param ttl_seconds: a lease not renewed for this long may be taken over.
    """

    def __init__(
        self,
        engine: t.Callable[[], sa.Engine],
        peer_url: str,
        *,
        ttl_seconds: float,
        clock: t.Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self.peer_url = peer_url
        self.ttl = dt.timedelta(seconds=ttl_seconds)
        self._clock = clock
        self._holder = process_holder()
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_pid: int | None = None
        self._table = t.cast(sa.Table, FetchLease.__table__)

    @property
    def holder(self) -> str:
        """This process's name in the lease rows (a new one after a fork)."""
        if self._heartbeat_pid not in (None, os.getpid()):
            self._holder = process_holder()
            self._held.clear()
            self._heartbeat = None
            self._heartbeat_pid = None
        return self._holder

    def claim(self, digest: str) -> Claim:
        """Claim ``digest`` for this process unless a live lease of another host holds it.

        A database that cannot be reached makes the claim ours: the fleet then fetches
        once per host rather than failing the pull.
        """
        holder = self.holder
        now = self._clock()
        table = self._table
        insert = insert_for(self._engine().dialect.name)
        statement = (
            insert(table)
            .values(digest=digest, holder=holder, peer_url=self.peer_url, heartbeat_at=now)
            .on_conflict_do_update(
                index_elements=[table.c.digest],
                set_={"holder": holder, "peer_url": self.peer_url, "heartbeat_at": now},
                where=sa.or_(table.c.heartbeat_at < now - self.ttl, table.c.holder == holder),
            )
            .returning(table.c.holder)
        )
        try:
            with self._engine().begin() as connection:
                if connection.execute(statement).first() is not None:
                    self._hold(digest)
                    return Claim(ours=True)
                row = connection.execute(
                    sa.select(table.c.peer_url).where(table.c.digest == digest)
                ).first()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("fetch lease of %s not claimed (%s): fetching it here", digest, exc)
            return Claim(ours=True)
        if row is None:  # released between the two statements
            return self.claim(digest)
        return Claim(ours=False, peer_url=str(row.peer_url))

    def release(self, digest: str) -> None:
        """End this process's lease of ``digest`` (its fetch committed or failed)."""
        with self._lock:
            if digest not in self._held:
                return
            self._held.discard(digest)
        table = self._table
        try:
            with self._engine().begin() as connection:
                connection.execute(
                    sa.delete(table).where(table.c.digest == digest, table.c.holder == self.holder)
                )
        except sa.exc.SQLAlchemyError as exc:
            log.warning("fetch lease of %s not released (%s): it expires", digest, exc)

    def renew(self) -> int:
        """Renew every lease this process holds, in one statement; how many."""
        with self._lock:
            held = sorted(self._held)
        if not held:
            return 0
        table = self._table
        with self._engine().begin() as connection:
            result = connection.execute(
                sa.update(table)
                .where(table.c.holder == self.holder, table.c.digest.in_(held))
                .values(heartbeat_at=self._clock())
            )
        return int(result.rowcount or 0)

    def _hold(self, digest: str) -> None:
        with self._lock:
            self._held.add(digest)
            if self._heartbeat is None:
                self._heartbeat_pid = os.getpid()
                self._heartbeat = threading.Thread(
                    target=self._beat, name="dependency-proxy-fetch-leases", daemon=True
                )
                self._heartbeat.start()

    def _beat(self) -> None:
        """Renew the leases while this process holds any; the next claim starts it again."""
        interval = max(self.ttl.total_seconds() / 4, 0.2)
        while True:
            time.sleep(interval)
            with self._lock:
                if not self._held:
                    self._heartbeat = None
                    return
            try:
                self.renew()
            except sa.exc.SQLAlchemyError as exc:
                log.warning("fetch leases not renewed: %s", exc)
