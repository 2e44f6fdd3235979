"""Upstream bearer tokens shared by the worker processes of a host, and by the hosts of
a fleet.

Each worker has its own :class:`~.client.UpstreamClient`; without a shared cache,
every worker would ask the upstream's token realm for its own token per repository.
Tokens are kept in small files (mode 0600) next to the blob store, and an exclusive
``flock`` per key makes one process fetch while the others wait and then read its token.
With ``PEER_URL`` set, :class:`~.fetch.fleet_tokens.FleetTokens` also keeps them in the
database, where the other hosts find them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import typing as t


class TokenShare(t.Protocol):
    """Where an upstream client finds tokens other processes fetched."""

    def locked(self, key: str) -> t.ContextManager[None]: ...

    def load(self, key: str) -> tuple[str, float] | None: ...

    def save(self, key: str, token: str, expires_at: float) -> None: ...


class SharedTokenFiles:
    """:param folder: created if missing; readable by the application's user only."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, mode=0o700, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, hashed_key(key))

    @contextlib.contextmanager
    def locked(self, key: str) -> t.Iterator[None]:
        """Hold the key's lock: one process at a time refreshes a token."""
        fd = os.open(self._path(key) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load(self, key: str) -> tuple[str, float] | None:
        """``(token, expires_at)`` with ``expires_at`` in seconds since the epoch."""
        try:
            with open(self._path(key)) as file:
                entry = json.load(file)
            return str(entry["token"]), float(entry["expires_at"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def save(self, key: str, token: str, expires_at: float) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".token-")
        with os.fdopen(fd, "w") as file:
            json.dump({"token": token, "expires_at": expires_at}, file)
        os.replace(temporary, self._path(key))


def hashed_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
