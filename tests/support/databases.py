"""Empty databases of one backend (SQLite files or PostgreSQL databases) on demand."""

from __future__ import annotations

import itertools
from pathlib import Path

from .postgres import PostgresCluster


class Databases:
    """Makes empty databases of one backend and removes them when the session ends."""

    def __init__(
        self,
        backend: str,
        directory: Path,
        cluster: PostgresCluster | None,
    ) -> None:
        self.backend = backend
        self.directory = directory
        self.cluster = cluster
        self._counter = itertools.count(1)
        self._created: list[str] = []

    def create(self, prefix: str = "test") -> str:
        """Return the SQLAlchemy URL of a new, empty database."""
        if self.cluster is None:
            path = self.directory / f"{prefix}-{next(self._counter)}.sqlite"
            return f"sqlite:///{path}"
        name = self.cluster.create_database(prefix)
        self._created.append(name)
        return self.cluster.url(name)

    def drop(self, url: str) -> None:
        if self.cluster is not None:
            name = url.rsplit("/", 1)[1]
            self.cluster.drop_database(name)
            self._created.remove(name)

    def drop_all(self) -> None:
        for name in list(self._created):
            assert self.cluster is not None
            self.cluster.drop_database(name)
        self._created.clear()
