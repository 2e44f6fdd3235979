"""Upstream bearer tokens shared by the hosts of a fleet, through the database.

Each host keeps the tokens its workers fetched in files (:mod:`..upstream.token_cache`);
with ``PEER_URL`` set, :class:`FleetTokens` puts the database's
``dependency_proxy_upstream_tokens`` table behind those files, so a token one host
fetched serves the others until it expires. Like the fetch leases (:mod:`.leases`) it
is fleet coordination in short statements, and it degrades the same way: a database
that cannot be reached leaves each host with its own tokens. It lives here rather than
in ``upstream/``, which knows nothing of the database.
"""

from __future__ import annotations

import logging
import time
import typing as t

import sqlalchemy as sa

from ..models.tables import UpstreamToken
from ..upstream.token_cache import SharedTokenFiles, hashed_key

log = logging.getLogger(__name__)


class FleetTokens:
    """The host's token files in front of the fleet's table of tokens.

    :param engine: the database engine (called, so it can be resolved lazily).
    """

    def __init__(self, files: SharedTokenFiles, engine: t.Callable[[], sa.Engine]) -> None:
        self.files = files
        self._engine = engine
        self._table = t.cast(sa.Table, UpstreamToken.__table__)

    def locked(self, key: str) -> t.ContextManager[None]:
        return self.files.locked(key)

    def load(self, key: str) -> tuple[str, float] | None:
        entry = self.files.load(key)
        if entry is not None and entry[1] > time.time():
            return entry
        table = self._table
        try:
            with self._engine().begin() as connection:
                row = connection.execute(
                    sa.select(table.c.token, table.c.expires_at).where(
                        table.c.key == hashed_key(key)
                    )
                ).first()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("upstream tokens of the fleet not read: %s", exc)
            return entry
        if row is None:
            return entry
        self.files.save(key, row.token, row.expires_at)
        return str(row.token), float(row.expires_at)

    def save(self, key: str, token: str, expires_at: float) -> None:
        self.files.save(key, token, expires_at)
        table = self._table
        hashed = hashed_key(key)
        try:
            with self._engine().begin() as connection:
                connection.execute(sa.delete(table).where(table.c.key == hashed))
                connection.execute(
                    sa.insert(table).values(key=hashed, token=token, expires_at=expires_at)
                )
        except sa.exc.SQLAlchemyError as exc:
            log.warning("upstream token not shared with the fleet: %s", exc)
