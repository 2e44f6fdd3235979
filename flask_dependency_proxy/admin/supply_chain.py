"""The supply-chain controls, whether from a group's page, the REST API or the command
line: blocked images, the record of who pulled what, a group's policy for a cached
tag that upstream deleted, the tag cooldown (its settings, the tags in cooldown and
their early release), and the events the controls recorded.

Group owners block and unblock for their own group (``group_id``); instance
administrators, from the command line, for every group (``group_id`` ``None``) or for
one. A block takes effect in this process at once (the block list is reloaded) and in
the others within ``BLOCK_REFRESH_SECONDS``. Blocking a digest answers who pulled it
lately (:attr:`BlockCreated.pulled`), the first question on the day a digest turns out
to be compromised.

Every method runs in the caller's database phase (see :mod:`..models.database`);
writes commit. Nothing here knows HTTP or Click.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import typing as t

from ..models.blocks import MAX_PATTERN_LENGTH, MAX_REASON_LENGTH, Block, BlockRecords, Event
from ..models.cooldowns import Hold, TagHoldRecords
from ..models.group_settings import (
    DIGEST_PULL_POLICIES,
    KEEP,
    MAX_COOLDOWN_SECONDS,
    MAX_EXEMPT_PATTERNS,
    NEW_TAG_POLICIES,
    NOT_FOUND_POLICIES,
    Keep,
)
from ..models.pulls import PullEntry, PullFilter, PullRecords, PullSummary
from ..models.tables import utcnow
from ..oci.reference import is_valid_digest, is_valid_image_name

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..cache.blocks import BlockList
    from ..cache.cooldown import CooldownPolicy, Cooldowns
    from ..models.group_settings import GroupSettingsRecords
    from ..models.listings import Page

#: Days of pulls a new block's answer and an image's deletion page look back.
RECENT_PULL_DAYS = 30
#: A tag pattern: tag characters and the shell wildcards ``*``, ``?``, ``[``, ``]``.
_PATTERN = re.compile(rf"[A-Za-z0-9_.*?\[\]!-]{{1,{MAX_PATTERN_LENGTH}}}")
#: An image-name pattern: image-name characters and the shell wildcards.
_IMAGE_PATTERN = re.compile(r"[a-z0-9_./*?\[\]!-]{1,255}")


class InvalidBlock(ValueError):
    """A block that cannot be made: ``errors`` names the fields."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field} {problem}" for field, problem in errors.items()))
        self.errors = errors


@dataclasses.dataclass(frozen=True)
class BlockCreated:
    """A new block, and who pulled what it blocks in the last :data:`RECENT_PULL_DAYS`."""

    block: Block
    pulled: PullSummary


@dataclasses.dataclass(frozen=True)
class DeletedTagPolicy:
    """A group's policy for a cached tag that upstream answers 404 for.

    :param own: the group's own choice, ``None`` when it uses the instance's default.
    """

    own: str | None
    default: str

    @property
    def effective(self) -> str:
        return self.own or self.default


class InvalidCooldown(ValueError):
    """Cooldown settings that cannot be saved: ``errors`` names the fields."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field} {problem}" for field, problem in errors.items()))
        self.errors = errors


@dataclasses.dataclass(frozen=True)
class CooldownSettings:
    """A group's tag cooldown: its own values (``None``: the instance's default), the
    instance's defaults, and the policy that applies."""

    own_seconds: int | None
    own_new_tags: str | None
    own_digest_pulls: str | None
    exempt: tuple[str, ...]
    default: CooldownPolicy
    effective: CooldownPolicy


@dataclasses.dataclass(frozen=True)
class HeldTag:
    """A tag in cooldown, and when its pending digest is served."""

    hold: Hold
    release_at: dt.datetime


class SupplyChainAdmin:
    """The supply-chain use cases of one application.

    :param blocks: the pull path's block list, reloaded after every change here.
    :param serve_deleted_tags_default: the instance's default for a deleted tag.
    """

    def __init__(
        self,
        session: t.Callable[[], Session],
        *,
        settings: GroupSettingsRecords,
        blocks: BlockList,
        serve_deleted_tags_default: bool,
        cooldowns: Cooldowns | None = None,
        clock: t.Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._records = BlockRecords(session)
        self._holds = TagHoldRecords(session)
        self._cooldowns = cooldowns
        self._pulls = PullRecords(session)
        self._settings = settings
        self._blocks = blocks
        self._default = "serve" if serve_deleted_tags_default else "refuse"
        self._clock = clock

    # -- blocks --------------------------------------------------------------------------

    def blocks(self, group_id: int | None, *, removed: bool = False) -> list[Block]:
        """The blocks that apply to the group (``None``: every block), newest first."""
        return self._records.listing(group_id, removed=removed)

    def block(
        self,
        group_id: int | None,
        *,
        digest: str | None = None,
        image: str | None = None,
        tag_pattern: str | None = None,
        reason: str,
        by: str,
    ) -> BlockCreated:
        """Block a manifest digest, or an image's tags that match ``tag_pattern``.

        :param group_id: the group; ``None``: every group (instance administrators).
        :param by: who blocks (a username), recorded.
        :raises InvalidBlock: neither or both targets, a malformed value, no reason.
        """
        errors: dict[str, str] = {}
        reason = (reason or "").strip()
        if not reason:
            errors["reason"] = "must say why the image is blocked"
        elif len(reason) > MAX_REASON_LENGTH:
            errors["reason"] = f"must be at most {MAX_REASON_LENGTH} characters"
        if digest is not None:
            if image is not None or tag_pattern is not None:
                errors["digest"] = "blocks alone: give a digest, or an image and a tag pattern"
            elif not is_valid_digest(digest):
                errors["digest"] = "must be a digest such as sha256:<64 hex digits>"
        elif image is None or tag_pattern is None:
            errors["image"] = "and tag_pattern are needed when no digest is given"
        else:
            if not is_valid_image_name(image):
                errors["image"] = "is not a valid image name"
            if not _PATTERN.fullmatch(tag_pattern):
                errors["tag_pattern"] = (
                    f"must be at most {MAX_PATTERN_LENGTH} characters of tags and the"
                    " wildcards * ? [ ]"
                )
        if errors:
            raise InvalidBlock(errors)
        block = self._records.add(
            group_id=group_id,
            digest=digest,
            image=image,
            tag_pattern=tag_pattern,
            reason=reason,
            by=by,
            now=self._clock(),
        )
        self._blocks.reload()
        digests = self._blocks.digests_of(block.id)
        since = self._clock() - dt.timedelta(days=RECENT_PULL_DAYS)
        pulled = self._pulls.summary(digests, group_id, since, image=image)
        return BlockCreated(block, pulled)

    def unblock(self, block_id: int, group_id: int | None, *, by: str) -> Block | None:
        """Lift a block (recorded); ``None`` when the group has no such active block
        (with ``group_id`` ``None``: no such active block at all). A group's owners
        cannot lift an instance administrator's block."""
        block = self._records.remove(block_id, group_id=group_id, by=by, now=self._clock())
        if block is not None:
            self._blocks.reload()
        return block

    # -- the pull record -----------------------------------------------------------------

    def pulls(self, where: PullFilter, page: int, per_page: int) -> Page[PullEntry]:
        """One page of the pull record, newest first."""
        return self._pulls.find(where, page, per_page)

    def image_pulls(self, group_id: int, image: str) -> PullSummary:
        """How often the group pulled ``image`` in the last :data:`RECENT_PULL_DAYS`, and
        the projects of the latest pulls (the image's deletion page)."""
        since = self._clock() - dt.timedelta(days=RECENT_PULL_DAYS)
        return self._pulls.summary((), group_id, since, image=image)

    def forget_pulls(self, days: int, batch_size: int = 1000) -> int:
        """Delete pulls older than ``days``; how many."""
        return self._pulls.forget_before(self._clock() - dt.timedelta(days=days), batch_size)

    # -- deleted tags and events ---------------------------------------------------------

    def deleted_tag_policy(self, group_id: int) -> DeletedTagPolicy:
        return DeletedTagPolicy(self._settings.get(group_id).upstream_not_found, self._default)

    def set_deleted_tag_policy(self, group_id: int, policy: str | None) -> DeletedTagPolicy:
        """``serve`` or ``refuse`` a cached tag upstream deleted; ``None``: the default.

        :raises ValueError: another policy.
        """
        if policy is not None and policy not in NOT_FOUND_POLICIES:
            raise ValueError(f"must be one of {', '.join(NOT_FOUND_POLICIES)}")
        self._settings.update(group_id, self._clock(), upstream_not_found=policy)
        return self.deleted_tag_policy(group_id)

    def events(self, group_id: int, limit: int = 20) -> list[Event]:
        """What the controls did in the group lately, newest first."""
        return self._records.events(group_id, limit)

    # -- tag cooldown --------------------------------------------------------------------

    def _cooldowns_of(self) -> Cooldowns:
        if self._cooldowns is None:
            raise RuntimeError("this application has no tag cooldown")
        return self._cooldowns

    def cooldown(self, group_id: int) -> CooldownSettings:
        """The group's cooldown settings, as saved (not as a pull process last read them)."""
        own = self._settings.get(group_id)
        default = self._cooldowns_of().default
        return CooldownSettings(
            own_seconds=own.cooldown_seconds,
            own_new_tags=own.cooldown_new_tags,
            own_digest_pulls=own.cooldown_digest_pulls,
            exempt=own.cooldown_exempt or (),
            default=default,
            effective=default.over(own),
        )

    def set_cooldown(
        self,
        group_id: int,
        *,
        seconds: int | None | Keep = KEEP,
        new_tags: str | None | Keep = KEEP,
        digest_pulls: str | None | Keep = KEEP,
        exempt: t.Sequence[str] | Keep = KEEP,
    ) -> CooldownSettings:
        """Change the group's cooldown (``None``: back to the instance's default); the
        other values stay. Switched off, the group's tags in cooldown are forgotten:
        their next pull serves what upstream has.

        :raises InvalidCooldown: a value out of bounds, an unknown policy, a malformed
            image pattern.
        """
        errors: dict[str, str] = {}
        if isinstance(seconds, int) and not 0 <= seconds <= MAX_COOLDOWN_SECONDS:
            errors["cooldown_hours"] = f"must be from 0 to {MAX_COOLDOWN_SECONDS // 3600}"
        if isinstance(new_tags, str) and new_tags not in NEW_TAG_POLICIES:
            errors["new_tags"] = f"must be one of {', '.join(NEW_TAG_POLICIES)} or null"
        if isinstance(digest_pulls, str) and digest_pulls not in DIGEST_PULL_POLICIES:
            errors["digest_pulls"] = f"must be one of {', '.join(DIGEST_PULL_POLICIES)} or null"
        if not isinstance(exempt, Keep):
            exempt = [pattern.strip() for pattern in exempt if pattern.strip()]
            if len(exempt) > MAX_EXEMPT_PATTERNS:
                errors["exempt"] = f"may hold at most {MAX_EXEMPT_PATTERNS} patterns"
            bad = [pattern for pattern in exempt if not _IMAGE_PATTERN.fullmatch(pattern)]
            if bad:
                errors["exempt"] = (
                    f"has patterns that are not image names with wildcards: {bad[0][:100]!r}"
                )
        if errors:
            raise InvalidCooldown(errors)
        self._settings.update(
            group_id,
            self._clock(),
            cooldown_seconds=seconds,
            cooldown_new_tags=new_tags,
            cooldown_digest_pulls=digest_pulls,
            cooldown_exempt=exempt if isinstance(exempt, Keep) else (exempt or None),
        )
        saved = self.cooldown(group_id)
        if saved.effective.seconds <= 0:
            self._holds.drop_group(group_id)
        self._cooldowns_of().reload()
        return saved

    def held_tags(self, group_id: int) -> list[HeldTag]:
        """The group's tags in cooldown with their pending digests and release times,
        soonest release first."""
        policy = self.cooldown(group_id).effective
        held = [HeldTag(hold, policy.release_at(hold)) for hold in self._holds.listing(group_id)]
        return sorted(held, key=lambda entry: (entry.release_at, entry.hold.id))

    def release(self, group_id: int, hold_id: int, *, by: str) -> HeldTag | None:
        """Release a pending digest early (recorded with ``by``): the tag's next pull
        serves it. ``None``: the group has no such tag in cooldown, or it was released."""
        hold = self._holds.release(hold_id, group_id, by=by, now=self._clock())
        if hold is None:
            return None
        return HeldTag(hold, self.cooldown(group_id).effective.release_at(hold))
