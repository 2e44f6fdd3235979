"""Image references and media types, as the OCI distribution spec defines them.

Pure functions with no Flask, database or network: every name, tag and digest that
comes in from a client passes through here before anything touches storage, SQL or
upstream.
"""

from __future__ import annotations

import dataclasses
import json
import re

from .errors import ErrorCode, RegistryError

#: One path component of a repository name.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST_RE = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
#: A group's full path on the host platform (a little wider than a repository component:
#: hosts allow upper case, which is folded to lower case).
GROUP_PATH_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,254})*"
)

#: The separator between the group path and the image name in a proxy path.
PROXY_SEPARATOR = "/dependency_proxy/containers/"
#: Repository names are limited to this many characters by the distribution spec.
MAX_NAME_LENGTH = 255

MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

#: Manifest media types the proxy fetches and passes through, in preference order.
MANIFEST_MEDIA_TYPES: tuple[str, ...] = (
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
)
#: Sent upstream on every manifest request: without the full list, a registry converts
#: to schema 1 (a different digest), answers 404 for OCI content, or picks a platform.
UPSTREAM_MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
#: Manifest responses are small; anything larger is refused rather than buffered.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ProxyPath:
    """A validated ``<group>/dependency_proxy/containers/<image>`` repository path.

    :param group_path: the group's full path, lowercased.
    :param image: the image name as the client wrote it (``alpine``, ``bitnami/redis``,
        ``ghcr.io/org/app``); which upstream serves it, under which name, is
        :mod:`..upstreams`' business.
    """

    group_path: str
    image: str

    @property
    def repository(self) -> str:
        return f"{self.group_path}{PROXY_SEPARATOR}{self.image}"


def parse_proxy_path(name: str) -> ProxyPath:
    """Split and validate a repository path from a registry URL or token scope.

    :raises RegistryError: ``NAME_INVALID`` for a malformed path, ``NAME_UNKNOWN`` for a
        well-formed repository that is not a dependency proxy path.
    """
    if len(name) > MAX_NAME_LENGTH + 256:
        raise RegistryError(ErrorCode.NAME_INVALID, "repository name is too long")
    group_path, sep, image = name.partition(PROXY_SEPARATOR)
    if not sep:
        raise RegistryError(
            ErrorCode.NAME_UNKNOWN,
            "repository name not known to registry",
            detail={"name": name[:300]},
        )
    if not GROUP_PATH_RE.fullmatch(group_path):
        raise RegistryError(ErrorCode.NAME_INVALID, "invalid group path", {"name": name[:300]})
    if len(image) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(image):
        raise RegistryError(ErrorCode.NAME_INVALID, "invalid image name", {"name": name[:300]})
    return ProxyPath(group_path=group_path.lower(), image=image)


def is_valid_image_name(image: str) -> bool:
    """Whether ``image`` is a repository name the registry would accept after the prefix."""
    return len(image) <= MAX_NAME_LENGTH and _NAME_RE.fullmatch(image) is not None


def is_digest(reference: str) -> bool:
    return ":" in reference


def is_tag(reference: str) -> bool:
    return ":" not in reference


def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.fullmatch(tag) is not None


def is_valid_digest(digest: str) -> bool:
    """Whether ``digest`` is ``sha256:<64 hex>`` or ``sha512:<128 hex>``."""
    return _DIGEST_RE.fullmatch(digest) is not None


def validate_digest(digest: str) -> str:
    """:raises RegistryError: ``DIGEST_INVALID`` unless ``sha256:<hex>`` or ``sha512:<hex>``."""
    if not _DIGEST_RE.fullmatch(digest):
        raise RegistryError(ErrorCode.DIGEST_INVALID, "invalid digest", {"digest": digest[:200]})
    return digest


def validate_reference(reference: str) -> str:
    """Validate a manifest reference, which is a tag or a digest.

    :raises RegistryError: ``DIGEST_INVALID`` (400) for a malformed digest;
        ``MANIFEST_UNKNOWN`` (404) for anything else that is not a tag, since no manifest
        can exist under it (what distribution-spec clients and conformance tools expect).
    """
    if is_digest(reference):
        return validate_digest(reference)
    if not _TAG_RE.fullmatch(reference):
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            "manifest unknown: not a valid tag or digest",
            {"reference": reference[:200]},
        )
    return reference


def merge_accept(header_values: list[str]) -> list[str]:
    """Merge every ``Accept`` line a client sent into one ordered list of media types.

    Clients such as skopeo send one header line per type; parameters (``;q=``) are dropped.
    """
    seen: dict[str, None] = {}
    for value in header_values:
        for item in value.split(","):
            media_type = item.split(";", 1)[0].strip().lower()
            if media_type:
                seen.setdefault(media_type, None)
    return list(seen)


def accepts(client_types: list[str], media_type: str) -> bool:
    """Whether a manifest of ``media_type`` may be returned to a client that sent these types.

    A client that sent nothing manifest-specific gets whatever is cached, which is what
    registries do for clients that predate content negotiation.
    """
    manifest_types = [m for m in client_types if m in MANIFEST_MEDIA_TYPES]
    if not manifest_types:
        return True
    return media_type in manifest_types


#: The platform a registry picks from a manifest list for a client that cannot take one.
DEFAULT_PLATFORM = ("linux", "amd64")


def default_platform_manifest(content: bytes) -> str | None:
    """The digest of a manifest list's ``linux/amd64`` manifest, if it has a valid one."""
    try:
        entries = json.loads(content).get("manifests")
    except (ValueError, AttributeError):
        return None
    for entry in entries if isinstance(entries, list) else []:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(platform, dict):
            continue
        if (platform.get("os"), platform.get("architecture")) == DEFAULT_PLATFORM:
            digest = entry.get("digest")
            if isinstance(digest, str) and _DIGEST_RE.fullmatch(digest):
                return digest
    return None
