"""The tag cooldown: a tag's new upstream digest is served only once it is old enough.

When upstream moves a tag to a digest the group's cache has not served for it, the
digest is held back (:class:`~..models.cooldowns.Hold`) and the tag keeps serving its
previous digest, marked with the pending one and its release time, until the digest is
``seconds`` old, counted from when this group's cache first saw the tag point at it
(registries publish no push time). Owners may release it early. A brand-new tag (no
previous digest) is served at once or refused (``403 DENIED``, :class:`CooldownRefused`)
as the group's policy says; so is a pull by digest of a digest still held back.

The groups' policies are kept in memory (:class:`Cooldowns`) and read again every
``refresh_seconds``, like the blocked images: a pull never queries them. A tag's hold
is read with its cached manifest (one query) only in groups whose cooldown is on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import logging
import threading
import time
import typing as t

from ..models.cooldowns import Hold, TagHoldRecords
from ..models.database import DatabaseGuard, DatabaseUnavailable
from ..models.group_settings import Settings
from ..models.repository import ManifestRecord
from ..oci.errors import ErrorCode
from .results import Pending, PullRefused

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CooldownPolicy:
    """A group's cooldown (its own values over the instance's defaults).

    :param seconds: how long a new digest waits; ``0``: the cooldown is off.
    :param new_tags: ``serve`` a brand-new tag at once, or ``refuse`` it until it waited.
    :param digest_pulls: ``allow`` or ``refuse`` a pull by digest of a digest held back.
    :param exempt: image-name patterns (``*``, ``?``, ``[...]``) the cooldown skips.
    """

    seconds: float = 0
    new_tags: str = "serve"
    digest_pulls: str = "allow"
    exempt: tuple[str, ...] = ()

    def applies_to(self, image: str) -> bool:
        return self.seconds > 0 and not any(
            fnmatch.fnmatchcase(image, pattern) for pattern in self.exempt
        )

    def over(self, own: Settings) -> CooldownPolicy:
        """This policy (the instance's defaults) with the group's own values."""
        return CooldownPolicy(
            seconds=self.seconds if own.cooldown_seconds is None else own.cooldown_seconds,
            new_tags=own.cooldown_new_tags or self.new_tags,
            digest_pulls=own.cooldown_digest_pulls or self.digest_pulls,
            exempt=self.exempt if own.cooldown_exempt is None else own.cooldown_exempt,
        )

    def release_at(self, hold: Hold) -> dt.datetime:
        """When the held digest is served (naive UTC); an early release is now."""
        if hold.released_at is not None:
            return hold.released_at
        return hold.first_seen_at + dt.timedelta(seconds=self.seconds)


def _stamp(moment: dt.datetime) -> str:
    return moment.replace(microsecond=0).isoformat() + "Z"


class CooldownRefused(PullRefused):
    """``403 DENIED``: a brand-new tag, or a digest, still in cooldown under a group
    policy that refuses it. ``DENIED`` rather than ``MANIFEST_UNKNOWN``: the manifest
    exists and will be served; a ``404`` would tell clients, and mirror chains that try
    the next host on a ``404``, that the tag does not exist at all."""

    outcome = "refused"

    def __init__(self, what: str, digest: str, release_at: dt.datetime, now: dt.datetime):
        seconds = max(1, int((release_at - now).total_seconds()) + 1)
        super().__init__(
            ErrorCode.DENIED,
            f"tag cooldown: {what} is new ({digest}) and the group serves new images only"
            f" once they are older; it is served from {_stamp(release_at)}",
            {"digest": digest, "release_at": _stamp(release_at)},
            status=403,
        )
        self.headers["Retry-After"] = str(seconds)
        self.digest = digest


class Cooldowns:
    """The groups' cooldown policies in memory, and the holds of their tags.

    :param load: the settings of every group with cooldown values of its own.
    :param default: the instance's policy, for groups without values of their own.
    """

    def __init__(
        self,
        load: t.Callable[[], t.Sequence[Settings]],
        holds: TagHoldRecords,
        database: DatabaseGuard,
        *,
        default: CooldownPolicy,
        refresh_seconds: float = 5.0,
        monotonic: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.holds = holds
        self._database = database
        self.default = default
        self._refresh = refresh_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._groups: dict[int, CooldownPolicy] = {}
        self._loaded_at: float | None = None

    def reload(self) -> None:
        """Read the groups' policies now (after a change in this process)."""
        groups = {own.group_id: self.default.over(own) for own in self._load()}
        with self._lock:
            self._groups = groups
            self._loaded_at = self._monotonic()

    def _fresh(self) -> None:
        loaded_at = self._loaded_at
        if loaded_at is not None and self._monotonic() - loaded_at < self._refresh:
            return
        try:
            with self._database.phase("reading the groups' cooldowns", has_fallback=True):
                self.reload()
        except DatabaseUnavailable as exc:
            log.warning("cooldowns not reloaded, the last ones apply: %s", exc)
            with self._lock:
                self._loaded_at = self._monotonic()

    def group_policy(self, group_id: int) -> CooldownPolicy:
        self._fresh()
        return self._groups.get(group_id, self.default)

    def policy(self, group_id: int, image: str) -> CooldownPolicy | None:
        """The group's policy when the cooldown applies to ``image``; ``None``: off."""
        policy = self.group_policy(group_id)
        return policy if policy.applies_to(image) else None

    def find_tag(
        self, group_id: int, image: str, tag: str
    ) -> tuple[ManifestRecord | None, Hold | None]:
        """The tag's cached manifest and hold, in one query (in the caller's phase)."""
        return self.holds.find_tag(group_id, image, tag)

    def hold(
        self,
        group_id: int,
        image: str,
        tag: str,
        *,
        previous: str | None,
        digest: str,
        policy: CooldownPolicy,
        held: Hold | None,
        now: dt.datetime,
    ) -> Pending | None:
        """Upstream points the tag at ``digest``, which it does not serve (``previous``:
        what it serves; ``None``: a brand-new tag). Hold ``digest`` back, or keep the
        hold of it, and answer when it is served; ``None``: serve it now (its time has
        come, an owner released it, or a brand-new tag the policy serves at once).

        :param held: the tag's hold as read with the tag, when there was a cached tag.
        """
        if previous is None and policy.new_tags == "serve":
            return None
        with self._database.phase("holding a tag back"):
            if previous is None and held is None:
                held = self.holds.find(group_id, image, tag)
            if held is None or held.pending_digest != digest:
                held = self.holds.hold(
                    group_id,
                    image,
                    tag,
                    previous_digest=previous,
                    pending_digest=digest,
                    now=now,
                )
        release_at = policy.release_at(held)
        if held.released_at is not None or release_at <= now:
            return None
        return Pending(digest, release_at)

    def drop(self, group_id: int, image: str, tag: str) -> None:
        """The tag serves what upstream has: forget its hold (in the caller's phase)."""
        self.holds.drop(group_id, image, tag)

    def check_digest(self, group_id: int, image: str, digest: str, now: dt.datetime) -> None:
        """:raises CooldownRefused: the group refuses pulls by digest during the cooldown
        and ``digest`` is held back from one of its tags."""
        policy = self.policy(group_id, image)
        if policy is None or policy.digest_pulls != "refuse":
            return
        with self._database.phase("reading the tags in cooldown"):
            holds = self.holds.holding(group_id, digest)
        for hold in holds:
            release_at = policy.release_at(hold)
            if release_at > now:
                raise CooldownRefused(f"{hold.image}:{hold.tag}", digest, release_at, now)
