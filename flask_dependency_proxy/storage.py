"""Content-addressed blob storage: bytes by digest, staged and committed atomically.

Knows files and digests; nothing of the database, the upstream or HTTP. A blob is
written to a staging file while it is fetched and becomes visible under its digest
only through :meth:`FilesystemStore.commit`, an atomic rename after verification.
"""

from __future__ import annotations

import os
import typing as t


class FilesystemStore:
    """Blobs under ``<root>/blobs/<algorithm>/<2 hex>/<hex>``, staging under ``<root>/staging``.

    Staging and final files share a filesystem, so a commit is a ``rename``.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._staging = os.path.join(self.root, "staging")
        self._locks = os.path.join(self.root, "locks")
        os.makedirs(self._staging, exist_ok=True)
        os.makedirs(self._locks, exist_ok=True)
        #: Committed blobs live below this folder (what a web server may serve directly).
        self.blobs_root = os.path.join(self.root, "blobs")
        os.makedirs(self.blobs_root, exist_ok=True)

    def path(self, digest: str) -> str:
        """The final location of a blob. ``digest`` must already be validated."""
        algorithm, hex_digest = digest.split(":", 1)
        return os.path.join(self.blobs_root, algorithm, hex_digest[:2], hex_digest)

    def size(self, digest: str) -> int | None:
        """The size of a committed blob, or ``None`` when it is not stored."""
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            return None

    def open(self, digest: str) -> t.BinaryIO:
        """Open a committed blob for reading.

        :raises FileNotFoundError: when it is not stored.
        """
        return open(self.path(digest), "rb")

    def staging_path(self, digest: str) -> str:
        """Where a blob is written while it is fetched.

        One name per digest, so a reader in another process can find and follow it; only
        the holder of the digest's fetch lock (see :meth:`lock_path`) writes it.
        """
        algorithm, hex_digest = digest.split(":", 1)
        return os.path.join(self._staging, f"{algorithm}-{hex_digest}.partial")

    def lock_path(self, digest: str) -> str:
        """A file whose ``flock`` elects the one process that fetches a digest."""
        algorithm, hex_digest = digest.split(":", 1)
        return os.path.join(self._locks, f"{algorithm}-{hex_digest}.lock")

    def create_staging(self, digest: str) -> tuple[str, t.BinaryIO]:
        """Create (or empty) the staging file of a blob whose fetch lock the caller holds."""
        staging_path = self.staging_path(digest)
        return staging_path, open(staging_path, "wb")

    def commit(self, staging_path: str, digest: str) -> None:
        """Publish a fully written and verified staging file under its digest."""
        final = self.path(digest)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(staging_path, final)

    def discard(self, staging_path: str) -> None:
        """Remove a staging file that will not be committed."""
        try:
            os.unlink(staging_path)
        except FileNotFoundError:
            pass

    def delete(self, digest: str) -> bool:
        """Remove a committed blob; ``False`` when it was not there."""
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            return False
        return True
