"""Size limits on what the cache stores: the largest blob an instance fetches
(``DEPENDENCY_PROXY_MAX_BLOB_SIZE``) and each group's size limit.

Only new content is checked: a manifest the group does not hold yet, a blob it does
not hold yet. Cached content is always served. A group that new content would take
past its limit either evicts its least recently pulled manifests and blobs (never
those the pull in progress needs) or is refused with 403 ``DENIED``, as
``DEPENDENCY_PROXY_QUOTA_POLICY`` says.

A new image manifest is checked with the sizes its descriptors announce, so a pull
that cannot fit is refused before any of its blobs is fetched. A blob is checked
again before it is fetched or claimed, with its size when the store already has it;
pulls that run at the same time each see the usage before the others' blobs land,
so a group can pass its limit by at most one blob per concurrent fetch.

No Flask here; the callers run these checks inside their database phases.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import typing as t

from ..models.documents import index_children
from ..models.quota import QuotaRecords
from ..models.stats import human_size
from ..oci.errors import ErrorCode, RegistryError

log = logging.getLogger(__name__)

#: The largest group size limit accepted: 1 PiB.
MAX_GROUP_LIMIT_BYTES = 1024**5

_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1, "kib": 1024, "mib": 1024**2}
_UNITS.update({"gib": 1024**3, "tib": 1024**4})
_SIZE = re.compile(r"\s*([0-9]{1,16})(?:\.([0-9]{1,6}))?\s*([a-z]*)\s*", re.IGNORECASE)


class QuotaPolicy(enum.Enum):
    """What new content does to a group that it would take past its size limit."""

    EVICT = "evict"
    REFUSE = "refuse"


def parse_size(text: str) -> int | None:
    """``"500 MiB"`` → ``524288000``; bytes, KiB, MiB, GiB or TiB (no unit: bytes).

    :return: ``None`` for anything else, and for sizes outside 1 byte to
        :data:`MAX_GROUP_LIMIT_BYTES`.
    """
    match = _SIZE.fullmatch(text)
    if match is None or match.group(3).lower() not in _UNITS:
        return None
    whole, fraction, unit = match.groups()
    scale = _UNITS[unit.lower()]
    if fraction and scale == 1:
        return None
    size = int(whole) * scale + int(fraction or "0") * scale // 10 ** len(fraction or "")
    return size if 1 <= size <= MAX_GROUP_LIMIT_BYTES else None


def exact_size(size: int) -> str:
    """``524288000`` → ``"500 MiB"``: the largest unit that divides ``size`` exactly,
    so that :func:`parse_size` gives the same number back."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _UNITS[unit.lower()]
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def manifest_blobs(content: bytes) -> dict[str, int]:
    """The config and layers an image manifest names, digest to announced size; empty
    for an index or a document that is not an image manifest."""
    try:
        document = json.loads(content)
    except ValueError:
        return {}
    if not isinstance(document, dict) or not isinstance(document.get("layers"), list):
        return {}
    blobs: dict[str, int] = {}
    for descriptor in [document.get("config"), *document["layers"]]:
        if not isinstance(descriptor, dict):
            continue
        digest, size = descriptor.get("digest"), descriptor.get("size")
        if isinstance(digest, str) and isinstance(size, int) and not isinstance(size, bool):
            blobs[digest] = max(size, 0)
    return blobs


def blob_too_large(digest: str, size: int | None, limit: int) -> RegistryError:
    """The error for a blob over ``DEPENDENCY_PROXY_MAX_BLOB_SIZE``."""
    what = f"blob {digest}" if size is None else f"blob {digest} ({human_size(size)})"
    return RegistryError(
        ErrorCode.DENIED,
        f"{what} is larger than this registry's blob size limit of {human_size(limit)}"
        f" ({limit} bytes)",
        detail={"digest": digest, "size": size, "max_blob_size": limit},
    )


class Quotas:
    """The size checks of one application.

    :param records: the quota queries.
    :param policy: what happens to a group over its size limit.
    :param max_blob_size: largest blob fetched, in bytes; ``0`` sets no limit.
    :param flush_reads: writes this process's buffered last-read times, so eviction
        sees the latest pulls.
    """

    def __init__(
        self,
        records: QuotaRecords,
        *,
        policy: QuotaPolicy = QuotaPolicy.EVICT,
        max_blob_size: int = 0,
        flush_reads: t.Callable[[], object] = lambda: None,
    ) -> None:
        self.records = records
        self.policy = policy
        self.max_blob_size = max_blob_size
        self._flush_reads = flush_reads

    def check_blob_size(self, digest: str, size: int | None) -> None:
        """:raises RegistryError: ``DENIED``, for a blob larger than the limit."""
        if size is not None and self.max_blob_size and size > self.max_blob_size:
            raise blob_too_large(digest, size, self.max_blob_size)

    def admit_manifest(self, group_id: int, digest: str, content: bytes) -> None:
        """Check a manifest the group is about to store, with every blob it names.

        :raises RegistryError: ``DENIED``, for a blob over the size limit or an image
            the group's limit has no room for.
        """
        blobs = manifest_blobs(content)
        for blob_digest, size in blobs.items():
            self.check_blob_size(blob_digest, size)
        limit = self.records.limit(group_id)
        if limit is None:
            return
        held = self.records.held_blobs(group_id, blobs)
        needed = len(content) + sum(size for d, size in blobs.items() if d not in held)
        keep = {digest, *(index_children(content) or ())}
        self._admit(group_id, limit, needed, keep_manifests=keep, keep_blobs=blobs)

    def admit_blob(self, group_id: int, digest: str, size: int | None) -> None:
        """Check a blob the group does not hold yet, before it is fetched or claimed;
        ``size`` is ``None`` when only upstream knows it.

        :raises RegistryError: ``DENIED``, as :meth:`admit_manifest`.
        """
        self.check_blob_size(digest, size)
        limit = self.records.limit(group_id)
        if limit is None:
            return
        self._admit(group_id, limit, size or 0, keep_manifests=(), keep_blobs=(digest,))

    def _admit(
        self,
        group_id: int,
        limit: int,
        needed: int,
        *,
        keep_manifests: t.Collection[str],
        keep_blobs: t.Collection[str],
    ) -> None:
        usage = self.records.usage(group_id)
        if usage + needed <= limit:
            return
        if self.policy is QuotaPolicy.EVICT and needed <= limit:
            self._flush_reads()
            freed = self.records.evict(
                group_id,
                usage + needed - limit,
                keep_manifests=keep_manifests,
                keep_blobs=keep_blobs,
            )
            log.info(
                "group %s over its size limit of %d bytes: evicted %d bytes", group_id, limit, freed
            )
            if usage - freed + needed <= limit:
                return
            usage -= freed
        raise RegistryError(
            ErrorCode.DENIED,
            f"the group's storage quota of {human_size(limit)} ({limit} bytes) is used up:"
            f" {human_size(usage)} cached, {human_size(needed)} more needed",
            detail={"quota_bytes": limit, "used_bytes": usage, "needed_bytes": needed},
        )
