"""Blocked images on the pull path: matched in memory, never a query per pull.

:class:`BlockList` keeps the active blocks (:meth:`..models.blocks.BlockRecords.active_rules`)
as two maps, digests and image names, and reloads them when they are older than
``refresh_seconds``; a block or an unblock made in this process reloads them at once,
the other processes see it within ``refresh_seconds``. While the database cannot be
read the last rules stay in force.

A pull by tag is refused when a tag block of the image matches the tag, whatever digest
the tag has upstream; any pull is refused when the digest it would serve is blocked,
whether it comes from upstream, the cache, or the cache while upstream is down. The
refusal is ``403 DENIED`` with the block's reason (:class:`ImageBlocked`).
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
import typing as t

from ..models.blocks import BlockRule
from ..models.database import DatabaseGuard, DatabaseUnavailable
from ..oci.errors import ErrorCode
from .results import PullRefused

log = logging.getLogger(__name__)

#: Seconds the rules are trusted before the next pull reloads them.
REFRESH_SECONDS = 5.0


class ImageBlocked(PullRefused):
    """``403 DENIED``: the image a pull asked for is blocked.

    :param digest: the digest refused, when one was known (a tag block may refuse
        before upstream is asked).
    """

    #: The outcome the pull record keeps.
    outcome = "blocked"

    def __init__(self, rule: BlockRule, digest: str | None) -> None:
        what = f"{rule.image}:{rule.tag_pattern}" if rule.digest is None else rule.digest
        if rule.index is not None:
            what = f"{rule.index} (an index listing {digest})"
        super().__init__(
            ErrorCode.DENIED,
            f"image blocked: {rule.reason} (block {rule.block_id}: {what})",
            {"block": rule.block_id, **({"digest": digest} if digest else {})},
            status=403,
        )
        self.rule = rule
        self.digest = digest


class BlockList:
    """The active blocks of every group, in memory.

    :param load: reads the active rules (run in a database phase).
    :param database: bounds the reload; an outage keeps the last rules.
    """

    def __init__(
        self,
        load: t.Callable[[], t.Sequence[BlockRule]],
        database: DatabaseGuard,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        monotonic: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._database = database
        self._refresh = refresh_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._digests: dict[str, list[BlockRule]] = {}
        self._images: dict[str, list[BlockRule]] = {}
        self._loaded_at: float | None = None

    def reload(self) -> None:
        """Read the rules now (after a block or unblock in this process)."""
        rules = self._load()
        digests: dict[str, list[BlockRule]] = {}
        images: dict[str, list[BlockRule]] = {}
        for rule in rules:
            if rule.digest is not None:
                digests.setdefault(rule.digest, []).append(rule)
            elif rule.image is not None and rule.tag_pattern is not None:
                images.setdefault(rule.image, []).append(rule)
        with self._lock:
            self._digests, self._images = digests, images
            self._loaded_at = self._monotonic()

    def digests_of(self, block_id: int) -> list[str]:
        """The digests a block refuses as last loaded: its own, and an index's platform
        manifests."""
        with self._lock:
            return [
                digest
                for digest, rules in self._digests.items()
                if any(rule.block_id == block_id for rule in rules)
            ]

    def _fresh(self) -> None:
        loaded_at = self._loaded_at
        if loaded_at is not None and self._monotonic() - loaded_at < self._refresh:
            return
        try:
            with self._database.phase("reading blocked images", has_fallback=True):
                self.reload()
        except DatabaseUnavailable as exc:
            log.warning("blocked images not reloaded, the last ones apply: %s", exc)
            with self._lock:
                # Retried after another refresh interval, not on every pull.
                self._loaded_at = self._monotonic()

    def check_tag(self, group_id: int, image: str, tag: str) -> None:
        """:raises ImageBlocked: a tag block of ``image`` in the group matches ``tag``."""
        self._fresh()
        for rule in self._images.get(image, ()):
            if _applies(rule, group_id) and fnmatch.fnmatchcase(tag, t.cast(str, rule.tag_pattern)):
                raise ImageBlocked(rule, None)

    def check_digest(self, group_id: int, digest: str) -> None:
        """:raises ImageBlocked: ``digest`` is blocked in the group."""
        self._fresh()
        for rule in self._digests.get(digest, ()):
            if _applies(rule, group_id):
                raise ImageBlocked(rule, digest)


def _applies(rule: BlockRule, group_id: int) -> bool:
    return rule.group_id is None or rule.group_id == group_id
