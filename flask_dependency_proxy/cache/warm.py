"""Filling a group's cache ahead of a CI rush (``flask dependency-proxy warm``).

Warming goes through the same :class:`~.cache.PullThroughCache` calls as a pull, so it
follows every rule a pull does: the group's upstreams and credentials, quotas, a tag
checked with a ``HEAD``, and one upstream GET per blob shared with whatever pulls the
same blob at the same time (the fetch election of :mod:`..fetch.host_lock`, across hosts the
database lease). What is cached already costs no upstream GET.

Knows nothing of the terminal: progress goes to a :class:`Progress` the caller gives.
"""

from __future__ import annotations

import dataclasses
import json
import typing as t

from ..fetch.errors import FetchFailed
from ..models.database import DatabaseUnavailable
from ..oci.errors import RegistryError
from ..oci.reference import (
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_OCI_INDEX,
    PROXY_SEPARATOR,
    ProxyPath,
    is_valid_tag,
    parse_proxy_path,
    validate_digest,
)
from ..stores.base import Following, StorageError
from ..upstream.errors import UpstreamError

if t.TYPE_CHECKING:
    from .pull_through import PullThroughCache

_INDEX_TYPES = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_LIST)


class WarmError(ValueError):
    """An argument that names no image, or an image that cannot be warmed; the
    message says why."""


#: What fails one image and lets the next be warmed: what a pull would answer, a blob
#: transfer that broke off (upstream or store), a database outage.
_FAILURES = (
    RegistryError,
    WarmError,
    FetchFailed,
    UpstreamError,
    StorageError,
    DatabaseUnavailable,
)


@dataclasses.dataclass(frozen=True)
class Target:
    """An image to warm: a name and a tag or digest."""

    image: str
    reference: str

    @property
    def label(self) -> str:
        separator = "@" if ":" in self.reference else ":"
        return f"{self.image}{separator}{self.reference}"


def parse_target(text: str) -> Target:
    """``IMAGE[:TAG|@DIGEST]`` (the tag ``latest`` when neither is given).

    :raises WarmError: a malformed name, tag or digest.
    """
    text = text.strip()
    name, at, digest = text.partition("@")
    if at:
        try:
            validate_digest(digest)
        except RegistryError:
            raise WarmError(f"{text!r}: {digest!r} is not a sha256 or sha512 digest") from None
        return Target(name, digest)
    head, colon, tag = name.rpartition(":")
    if colon and "/" not in tag:
        if not is_valid_tag(tag):
            raise WarmError(f"{text!r}: {tag!r} is not a valid tag")
        return Target(head, tag)
    return Target(name, "latest")


def parse_platform(text: str) -> tuple[str, ...]:
    """``OS/ARCH[/VARIANT]`` as the parts a manifest list's ``platform`` gives.

    :raises WarmError: anything else.
    """
    parts = tuple(text.strip().lower().split("/"))
    if len(parts) not in (2, 3) or not all(part.isalnum() for part in parts):
        raise WarmError(f"{text!r} is not a platform such as linux/amd64 or linux/arm64/v8")
    return parts


@dataclasses.dataclass(frozen=True)
class Blob:
    digest: str
    size: int


@dataclasses.dataclass
class Plan:
    """What warming one image takes: its manifests (cached while planning) and the
    blobs they name, each once."""

    target: Target
    path: ProxyPath
    platforms: list[str] = dataclasses.field(default_factory=list)
    blobs: dict[str, Blob] = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(blob.size for blob in self.blobs.values())


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How warming one image went; ``error`` says why it failed."""

    target: Target
    fetched: int = 0
    fetched_bytes: int = 0
    cached: int = 0
    platforms: tuple[str, ...] = ()
    error: str | None = None


class Progress(t.Protocol):
    """Where a :class:`Warmer` reports its progress."""

    def planned(self, plan: Plan) -> None: ...

    def advance(self, plan: Plan, nbytes: int) -> None: ...

    def finished(self, outcome: Outcome) -> None: ...


class Warmer:
    """Warms images into one group's cache.

    :param platforms: the ``OS/ARCH[/VARIANT]`` entries of an index to warm; empty:
        every entry.
    """

    def __init__(
        self,
        cache: PullThroughCache,
        group_id: int,
        group_path: str,
        platforms: t.Collection[tuple[str, ...]] = (),
    ) -> None:
        self.cache = cache
        self.group_id = group_id
        self.group_path = group_path
        self.platforms = set(platforms)

    def warm(self, targets: t.Sequence[Target], progress: Progress) -> list[Outcome]:
        """Warm every image, in order: first each one's manifests (so the progress knows
        every size before the first blob), then their blobs. An image that fails comes
        back with its ``error``; the others are warmed all the same."""
        outcomes: dict[int, Outcome] = {}
        plans: list[tuple[int, Plan]] = []
        for position, target in enumerate(targets):
            try:
                plan = self.plan(target)
            except _FAILURES as exc:
                outcomes[position] = Outcome(target, error=_describe(exc))
                progress.finished(outcomes[position])
                continue
            plans.append((position, plan))
            progress.planned(plan)
        for position, plan in plans:
            try:
                outcome = self._fetch(plan, progress)
            except _FAILURES as exc:
                outcome = Outcome(
                    plan.target, platforms=tuple(plan.platforms), error=_describe(exc)
                )
            outcomes[position] = outcome
            progress.finished(outcome)
        return [outcomes[position] for position in range(len(targets))]

    def plan(self, target: Target) -> Plan:
        """Fetch (and so cache) the image's manifests and list the blobs they name.

        :raises RegistryError: as a pull of the manifest would answer.
        :raises WarmError: a bad name, an index with none of the platforms asked for,
            or a manifest that names malformed blobs.
        """
        try:
            path = parse_proxy_path(f"{self.group_path}{PROXY_SEPARATOR}{target.image}")
        except RegistryError as exc:
            raise WarmError(f"{target.image!r}: {exc.message}") from None
        plan = Plan(target, path)
        top = self._manifest(path, target.reference)
        if top.get("mediaType") in _INDEX_TYPES or "manifests" in top:
            entries = [e for e in _list(top, "manifests") if self._wanted(e)]
            if not entries:
                raise WarmError("the index has none of the platforms asked for")
            for entry in entries:
                plan.platforms.append(_platform_label(entry))
                self._add_blobs(plan, self._manifest(path, _digest(entry)))
        else:
            self._add_blobs(plan, top)
        return plan

    def _manifest(self, path: ProxyPath, reference: str) -> dict[str, t.Any]:
        try:
            result = self.cache.get_manifest(
                self.group_id, path, reference, list(MANIFEST_MEDIA_TYPES)
            )
        finally:
            self.cache.finish_request()
        try:
            document = json.loads(result.content)
        except ValueError:
            raise WarmError(f"the manifest {result.digest} is not JSON") from None
        if not isinstance(document, dict):
            raise WarmError(f"the manifest {result.digest} is not a JSON object")
        return document

    def _wanted(self, entry: t.Any) -> bool:
        if not self.platforms:
            return True
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(platform, dict):
            return False
        parts = (str(platform.get("os", "")), str(platform.get("architecture", "")))
        variant = platform.get("variant")
        return parts in self.platforms or (*parts, str(variant)) in self.platforms

    def _add_blobs(self, plan: Plan, manifest: dict[str, t.Any]) -> None:
        config = manifest.get("config")
        for descriptor in [config] if config is not None else []:
            self._add_blob(plan, descriptor)
        for descriptor in _list(manifest, "layers"):
            self._add_blob(plan, descriptor)

    @staticmethod
    def _add_blob(plan: Plan, descriptor: t.Any) -> None:
        digest = _digest(descriptor)
        size = descriptor.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise WarmError(f"the blob {digest} has no valid size")
        plan.blobs[digest] = Blob(digest, size)

    def _fetch(self, plan: Plan, progress: Progress) -> Outcome:
        fetched = fetched_bytes = cached = 0
        for blob in plan.blobs.values():
            try:
                # Done means committed: the process may exit right after the last blob.
                result = self.cache.get_blob(
                    self.group_id, plan.path, blob.digest, until_committed=True
                )
            finally:
                self.cache.finish_request()
            if not isinstance(result.location, Following):
                cached += 1
                progress.advance(plan, blob.size)
                continue
            chunks = result.location.chunks
            received = 0
            try:
                for chunk in chunks:
                    received += len(chunk)
                    progress.advance(plan, len(chunk))
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            if received != blob.size:
                raise WarmError(
                    f"the blob {blob.digest} broke off after {received} of {blob.size} bytes"
                )
            fetched += 1
            fetched_bytes += received
        return Outcome(
            plan.target,
            fetched=fetched,
            fetched_bytes=fetched_bytes,
            cached=cached,
            platforms=tuple(plan.platforms),
        )


def _list(document: dict[str, t.Any], key: str) -> list[t.Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise WarmError(f"the manifest's {key!r} is not a list")
    return value


def _digest(descriptor: t.Any) -> str:
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    try:
        return validate_digest(digest if isinstance(digest, str) else "")
    except RegistryError:
        raise WarmError(f"a descriptor has no valid digest: {str(descriptor)[:200]}") from None


def _platform_label(entry: dict[str, t.Any]) -> str:
    platform = entry.get("platform")
    if not isinstance(platform, dict):
        return "unknown"
    parts = [str(platform.get("os", "?")), str(platform.get("architecture", "?"))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def _describe(exc: Exception) -> str:
    if isinstance(exc, RegistryError):
        return f"{exc.code.name}: {exc.message}"
    return str(exc) or type(exc).__name__
