"""The OCI referrers of a digest (signatures, SBOMs, attestations attached to an image),
pulled through and cached like a manifest.

- Upstream's referrers API answers first (``GET /v2/<name>/referrers/<digest>``); an
  upstream without one (a ``404``: Docker Hub's older API, distribution 2.x) is read
  through the referrers tag schema instead: the image index tagged ``<alg>-<hex>``,
  fetched as any tag (:class:`~.manifests.ManifestCache`).
- Either answer is kept as the group's manifest under that tag, so while upstream cannot
  be asked the cached list is served, marked stale; a subject nobody attached anything
  to has an empty list.
- The list is kept whole; ``artifactType`` filters it here, on the way out.
- The referrer manifests and their blobs are ordinary content: clients pull them by
  digest through the usual routes, and a group only ever sees its own list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import typing as t

from ..models.repository import CacheMetadata
from ..oci.errors import ErrorCode, RegistryError
from ..oci.reference import MEDIA_TYPE_OCI_INDEX, ProxyPath
from ..upstream.errors import UpstreamError, UpstreamNotFound
from .manifests import ManifestCache
from .quota import Quotas
from .routes import ImageRoutes, first_that_has, unavailable

log = logging.getLogger(__name__)


def referrers_tag(digest: str) -> str:
    """The tag of a digest's referrers index in the tag schema: ``sha256-<hex>``."""
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}-{hex_digest}"


@dataclasses.dataclass(frozen=True)
class Referrers:
    """The referrers of one digest, as the descriptors of an image index.

    :param filtered: the list was filtered by ``artifactType``.
    :param stale: served from the cache because upstream could not be asked.
    """

    descriptors: tuple[dict[str, t.Any], ...]
    filtered: bool = False
    stale: bool = False

    def index(self) -> bytes:
        """The OCI image index a referrers answer is."""
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_OCI_INDEX,
                "manifests": list(self.descriptors),
            },
            separators=(",", ":"),
        ).encode()

    def of_type(self, artifact_type: str | None) -> Referrers:
        """Only the referrers of ``artifact_type`` (all for ``None``)."""
        if artifact_type is None:
            return self
        return dataclasses.replace(
            self,
            descriptors=tuple(
                d for d in self.descriptors if d.get("artifactType") == artifact_type
            ),
            filtered=True,
        )


def descriptors_of(content: bytes) -> tuple[dict[str, t.Any], ...]:
    """The well-formed descriptors of a referrers index; anything else in it is left
    out rather than passed on to clients."""
    try:
        document = json.loads(content)
    except ValueError:
        return ()
    manifests = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(manifests, list):
        return ()
    return tuple(
        entry
        for entry in manifests
        if isinstance(entry, dict)
        and isinstance(entry.get("digest"), str)
        and isinstance(entry.get("mediaType"), str)
        and isinstance(entry.get("size"), int)
    )


class ReferrersCache:
    """The referrers lists of one application's groups."""

    def __init__(
        self,
        *,
        routes: ImageRoutes,
        metadata: CacheMetadata,
        manifests: ManifestCache,
        quotas: Quotas,
    ) -> None:
        self.routes = routes
        self.metadata = metadata
        self.database = metadata.database
        self.manifests = manifests
        self.quotas = quotas

    def get(self, group_id: int, path: ProxyPath, digest: str) -> Referrers:
        """Every referrer of ``digest`` in the image's repository upstream, or the
        group's cached list while upstream cannot answer.

        :raises RegistryError: ``UNAVAILABLE`` or ``TOOMANYREQUESTS`` when upstream
            cannot answer and the group has no list cached.
        """
        tag = referrers_tag(digest)
        with self.database.phase("reading the image's upstream"):
            candidates = self.routes.image_candidates(group_id, path)
        try:
            content, source = first_that_has(
                candidates, lambda c: c.client.get_referrers(c.repository, digest)
            )
        except UpstreamNotFound:
            return self._from_tag_schema(group_id, path, tag)
        except UpstreamError as exc:
            with self.database.phase("reading cached referrers"):
                cached = self.metadata.find_tag(group_id, path.image, tag)
            if cached is None:
                raise unavailable(exc) from exc
            log.warning("upstream failed for referrers of %s (%s); serving cached", digest, exc)
            return Referrers(descriptors_of(cached.content), stale=True)
        descriptors = descriptors_of(content)
        kept = Referrers(descriptors).index()
        with self.database.phase("saving referrers"):
            cached = self.metadata.find_tag(group_id, path.image, tag)
            if cached is None or cached.content != kept:
                self.quotas.admit_manifest(group_id, _digest(kept), kept)
                self.metadata.save_manifest(
                    group_id,
                    path.image,
                    tag,
                    digest=_digest(kept),
                    media_type=MEDIA_TYPE_OCI_INDEX,
                    content=kept,
                    upstream=source.name,
                )
        return Referrers(descriptors)

    def _from_tag_schema(self, group_id: int, path: ProxyPath, tag: str) -> Referrers:
        """The index under the referrers tag, pulled through like any tag; none: no
        referrers."""
        try:
            result = self.manifests.get_manifest(group_id, path, tag, (MEDIA_TYPE_OCI_INDEX,))
        except RegistryError as error:
            if error.code is ErrorCode.MANIFEST_UNKNOWN:
                return Referrers(())
            raise
        return Referrers(descriptors_of(result.content), stale=result.stale)


def _digest(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()
