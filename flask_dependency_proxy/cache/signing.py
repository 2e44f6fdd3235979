"""Signature policies at the cache: a group's mode (``off``, ``warn``, ``enforce``) and
the signers it trusts, checked on every manifest pull against the verifier of
:mod:`..signatures`.

- The groups' policies are kept in each worker's memory and read again every
  ``refresh_seconds`` (like the blocked images and the tag cooldowns); a change made in
  this worker applies at once. A group without a policy of its own follows the
  instance's default (``DEPENDENCY_PROXY_SIGNATURE_MODE`` and ``_SIGNERS``).
- The signatures of a digest are fetched through the cache, as ordinary content: the
  ``sha256-<hex>.sig`` tag beside the image, and the Sigstore bundles among its OCI
  referrers (:mod:`.referrers`). So they are kept, and serve offline too.
- A verdict is kept per group, image, digest and policy fingerprint: in this worker's
  memory, with a table behind it for the other workers and hosts. A warm pull finds the
  policy and the verdict in memory: no query, no verification. A verified digest stays
  verified under that fingerprint; an unsigned or invalid one is looked at again after
  ``SIGNATURE_RECHECK_SECONDS`` (a signature may be pushed later). A new signer, trust
  root or index rule is a new fingerprint, so a policy change re-verifies.
- An index follows the policy's ``index_rule``. ``index``: the index is checked by its
  own digest (what a tag pull asks for); once it verifies, the platform manifests it
  lists count as verified by it, so the client's pulls of them by digest pass.
  ``platforms``: the index passes unchecked and each platform manifest, pulled by
  digest next, needs its own signature. Either way a platform manifest pulled on its
  own needs its own signature.
- Signature artifacts themselves (``.sig``/``.att``/``.sbom`` manifests, referrers with
  a ``subject``, referrers tag indexes) are not checked: a verifying client must reach
  them through the cache. Only content with no filesystem layer counts as one.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import threading
import time
import typing as t

from ..metrics import Metrics
from ..models.database import DatabaseGuard, DatabaseUnavailable
from ..models.signatures import SignatureRecords, StoredPolicy
from ..models.tables import utcnow
from ..oci.errors import ErrorCode, RegistryError
from ..oci.reference import (
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    ProxyPath,
)
from ..signatures import (
    IdentitySigner,
    KeySigner,
    SignatureLayer,
    SignatureVerifier,
    Status,
    TrustPolicy,
    TrustRoot,
    Verdict,
    bundle_layer_descriptor,
    signature_layer,
    signature_layer_descriptors,
    signature_tag,
)
from ..signatures.bundles import BUNDLE_MEDIA_TYPE
from ..signatures.errors import SignatureError, SignatureFormatError
from ..signatures.simplesigning import SIMPLE_SIGNING
from ..stores.base import Following
from .results import ManifestResult

if t.TYPE_CHECKING:
    from .pull_through import PullThroughCache

log = logging.getLogger(__name__)

MODES = ("off", "warn", "enforce")
#: How an index is checked: by its own digest, or by each platform manifest's.
INDEX_RULES = ("index", "platforms")
#: Signers a policy may list, each kind; a PEM key's largest size.
MAX_SIGNERS = 50
MAX_PEM_BYTES = 16 * 1024
MAX_PATTERN = 500
#: A signature blob larger than this is not a signature.
MAX_SIGNATURE_BLOB = 1024 * 1024
#: Verdicts one worker keeps in memory.
MEMORY_VERDICTS = 20_000

_REFERRERS_TAG = re.compile(r"(sha256-[0-9a-f]{64}|sha512-[0-9a-f]{128})(\.(sig|att|sbom))?")
_ARTIFACT_LAYERS = frozenset(
    {SIMPLE_SIGNING, BUNDLE_MEDIA_TYPE, "application/vnd.dsse.envelope.v1+json"}
)
_FILESYSTEM_LAYER = re.compile(
    r"application/vnd\.(oci\.image\.layer\.|docker\.image\.rootfs\.)", re.IGNORECASE
)


class PolicyError(ValueError):
    """A signature policy an owner sent that cannot be used, with the reason."""


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


@dataclasses.dataclass(frozen=True)
class GroupPolicy:
    """A group's parsed policy: its mode, and each trusted signer with the image-name
    pattern it is trusted for (``None``: every image)."""

    mode: str
    keys: tuple[tuple[KeySigner, str | None], ...] = ()
    identities: tuple[tuple[IdentitySigner, str | None], ...] = ()
    index_rule: str = "index"
    #: The trust policy and verdict fingerprint of each image pulled (memoized: a warm
    #: pull computes neither).
    _images: dict[str, tuple[TrustPolicy, str]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )

    def for_image(self, image: str, roots: TrustRoot | None) -> TrustPolicy:
        """The signers trusted for ``image``, with the instance's trust roots."""
        return self.trust(image, roots)[0]

    def trust(self, image: str, roots: TrustRoot | None) -> tuple[TrustPolicy, str]:
        """The signers trusted for ``image`` and the fingerprint its verdicts are kept
        under: the signers' and roots', and the index rule when it is not ``index``
        (a platform manifest vouched for by its index must not pass under
        ``platforms``)."""
        found = self._images.get(image)
        if found is not None:
            return found

        def applies(pattern: str | None) -> bool:
            return pattern is None or bool(_glob(pattern).fullmatch(image))

        trust = TrustPolicy(
            keys=tuple(key for key, pattern in self.keys if applies(pattern)),
            identities=tuple(i for i, pattern in self.identities if applies(pattern)),
            roots=roots,
        )
        fingerprint = trust.fingerprint
        if self.index_rule != "index":
            fingerprint = hashlib.sha256(f"{fingerprint}\n{self.index_rule}".encode()).hexdigest()
        if len(self._images) > 10_000:
            self._images.clear()
        self._images[image] = (trust, fingerprint)
        return trust, fingerprint


def _text(value: t.Any, what: str, *, limit: int = MAX_PATTERN, optional: bool = False) -> t.Any:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise PolicyError(f"{what} must be a non-empty string of at most {limit} characters")
    return value.strip()


def normalize_policy(body: t.Any, *, roots: TrustRoot | None) -> dict[str, t.Any]:
    """The policy document an owner sent, checked and in its stored form:
    ``{"mode", "keys": [{"name", "pem", "images"}], "identities": [{"issuer",
    "subject", "images"}], "index_rule"}``.

    :raises PolicyError: naming what is wrong.
    """
    if not isinstance(body, dict):
        raise PolicyError("the signature policy must be a JSON object")
    unknown = set(body) - {"mode", "keys", "identities", "index_rule"}
    if unknown:
        raise PolicyError(f"unknown fields: {', '.join(sorted(unknown))}")
    mode = body.get("mode", "off")
    if mode not in MODES:
        raise PolicyError(f"mode must be one of {', '.join(MODES)}")
    index_rule = body.get("index_rule") or "index"
    if index_rule not in INDEX_RULES:
        raise PolicyError(f"index_rule must be one of {', '.join(INDEX_RULES)}")
    keys, identities = body.get("keys") or [], body.get("identities") or []
    if not isinstance(keys, list) or not isinstance(identities, list):
        raise PolicyError("keys and identities must be lists")
    if len(keys) > MAX_SIGNERS or len(identities) > MAX_SIGNERS:
        raise PolicyError(f"at most {MAX_SIGNERS} keys and {MAX_SIGNERS} identities")
    document: dict[str, t.Any] = {
        "mode": mode,
        "keys": [],
        "identities": [],
        "index_rule": index_rule,
    }
    for number, key in enumerate(keys, 1):
        if not isinstance(key, dict) or set(key) - {"name", "pem", "images"}:
            raise PolicyError(f"key {number} must be an object with name, pem and images")
        pem = _text(key.get("pem"), f"key {number}'s pem", limit=MAX_PEM_BYTES)
        try:
            signer = KeySigner.from_pem(pem.encode(), name=key.get("name") or None)
        except (SignatureError, ValueError, TypeError) as error:
            raise PolicyError(f"key {number} is not a PEM public key: {error}") from None
        document["keys"].append(
            {
                "name": _text(signer.name, f"key {number}'s name", limit=200),
                "pem": pem,
                "images": _text(key.get("images"), "images", optional=True),
            }
        )
    for number, identity in enumerate(identities, 1):
        if not isinstance(identity, dict) or set(identity) - {"issuer", "subject", "images"}:
            raise PolicyError(
                f"identity {number} must be an object with issuer, subject and images"
            )
        document["identities"].append(
            {
                "issuer": _text(
                    identity.get("issuer"), f"identity {number}'s issuer", optional=True
                ),
                "subject": _text(identity.get("subject"), f"identity {number}'s subject"),
                "images": _text(identity.get("images"), "images", optional=True),
            }
        )
    if document["identities"] and (roots is None or not roots.authorities):
        raise PolicyError(
            "keyless identities need certificate roots, and this instance has none: see"
            " DEPENDENCY_PROXY_SIGNATURE_TRUSTED_ROOT and DEPENDENCY_PROXY_SIGNATURE_ROOTS"
        )
    if mode != "off" and not document["keys"] and not document["identities"]:
        raise PolicyError(f"mode {mode} needs at least one trusted key or identity")
    return document


def parse_policy(mode: str, document: t.Mapping[str, t.Any]) -> GroupPolicy:
    """A stored policy (checked when it was saved) as signers."""
    return GroupPolicy(
        mode=mode,
        keys=tuple(
            (KeySigner.from_pem(k["pem"].encode(), name=k.get("name")), k.get("images"))
            for k in document.get("keys") or []
        ),
        identities=tuple(
            (IdentitySigner(i.get("issuer"), i["subject"]), i.get("images"))
            for i in document.get("identities") or []
        ),
        index_rule=document.get("index_rule") or "index",
    )


def is_signature_artifact(reference: str, content: bytes) -> bool:
    """Whether a manifest is a signature, attestation or referrers list rather than an
    image: it has no filesystem layer, and it names a subject, holds only signature
    layers, or is an index of artifacts."""
    try:
        document = json.loads(content)
    except ValueError:
        return False
    if not isinstance(document, dict):
        return False
    manifests = document.get("manifests")
    if isinstance(manifests, list):
        return bool(_REFERRERS_TAG.fullmatch(reference)) and all(
            isinstance(m, dict) and m.get("artifactType") for m in manifests
        )
    layers = document.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        return False
    types = [str(layer.get("mediaType", "")) for layer in layers]
    if any(_FILESYSTEM_LAYER.match(media_type) for media_type in types):
        return False
    return "subject" in document or (bool(types) and all(m in _ARTIFACT_LAYERS for m in types))


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a group's policy says of one pull."""

    mode: str
    verdict: Verdict

    @property
    def refused(self) -> bool:
        return self.mode == "enforce" and self.verdict.status is not Status.VERIFIED


@dataclasses.dataclass(frozen=True)
class ImageState:
    """A cached image's verification state for the page and the API: ``verified`` (by
    ``signer``), ``unsigned``, ``invalid`` (with ``reason``) or ``not_checked`` (no
    policy, or none under the current one)."""

    state: str
    signer: str | None = None
    reason: str = ""

    def to_json(self) -> dict[str, t.Any]:
        return {"state": self.state, "signer": self.signer, "reason": self.reason or None}


_Key = tuple[int, str, str, str]
_OFF: dict[str, t.Any] = {"mode": "off", "keys": [], "identities": [], "index_rule": "index"}


def _is_index(media_type: str) -> bool:
    return media_type in (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_LIST)


class SignatureGate:
    """Checks manifest pulls against their group's signature policy.

    :param roots: the instance's trust roots (certificate authorities, log keys).
    :param recheck_seconds: how long an unsigned or invalid verdict is kept.
    :param default: the instance's policy document (as :func:`normalize_policy` makes
        it) for groups without their own; ``None``: they check nothing.
    :param refresh_seconds: how long this worker trusts the policies it read.
    """

    def __init__(
        self,
        *,
        records: SignatureRecords,
        database: DatabaseGuard,
        roots: TrustRoot | None,
        recheck_seconds: float,
        metrics: Metrics | None = None,
        clock: t.Callable[[], dt.datetime] = utcnow,
        default: t.Mapping[str, t.Any] | None = None,
        refresh_seconds: float = 5.0,
        monotonic: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self.records = records
        self.database = database
        self.roots = roots
        self.recheck = dt.timedelta(seconds=recheck_seconds)
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._lock = threading.Lock()
        self._verdicts: collections.OrderedDict[_Key, tuple[Verdict, dt.datetime]] = (
            collections.OrderedDict()
        )
        self._parsed: dict[tuple[int, str], GroupPolicy] = {}
        self.default_document: dict[str, t.Any] = dict(default or _OFF)
        self.default = parse_policy(self.default_document["mode"], self.default_document)
        self._refresh = refresh_seconds
        self._monotonic = monotonic
        self._policies: dict[int, GroupPolicy] = {}
        self._loaded_at: float | None = None

    # -- policies --------------------------------------------------------------------

    def policy(self, group_id: int) -> dict[str, t.Any]:
        """The group's policy document, read now: its own, or the instance's default
        (``"default": true``)."""
        stored = self.records.policy(group_id)
        if stored is None:
            return {**self.default_document, "default": True}
        return {**_OFF, **json.loads(stored.document), "mode": stored.mode, "default": False}

    def save_policy(self, group_id: int, body: t.Any) -> dict[str, t.Any]:
        """Check and store a policy an owner sent; the stored document. This worker
        applies it at once, the others within ``refresh_seconds``.

        :raises PolicyError: naming what is wrong.
        """
        document = normalize_policy(body, roots=self.roots)
        signers = {k: document[k] for k in ("keys", "identities", "index_rule")}
        self.records.save_policy(
            group_id, document["mode"], json.dumps(signers, sort_keys=True), self._clock()
        )
        self.reload()
        return {**document, "default": False}

    def use_default(self, group_id: int) -> dict[str, t.Any]:
        """Drop the group's own policy: it follows the instance's default again."""
        self.records.delete_policy(group_id)
        self.reload()
        return {**self.default_document, "default": True}

    def reload(self) -> None:
        """Read every group's policy now (inside a database phase)."""
        policies = {
            stored.group_id: self._group_policy(stored) for stored in self.records.policies()
        }
        with self._lock:
            self._policies = policies
            self._loaded_at = self._monotonic()

    def group_policy(self, group_id: int) -> GroupPolicy:
        """The policy that applies to the group's pulls, from memory (read again when
        older than ``refresh_seconds``; while the database cannot be read the last
        policies stay in force)."""
        loaded_at = self._loaded_at
        if loaded_at is None or self._monotonic() - loaded_at >= self._refresh:
            try:
                with self.database.phase("reading the signature policies", has_fallback=True):
                    self.reload()
            except DatabaseUnavailable as exc:
                if loaded_at is None:
                    raise
                log.warning("signature policies not reloaded, the last ones apply: %s", exc)
                with self._lock:
                    self._loaded_at = self._monotonic()
        return self._policies.get(group_id, self.default)

    def _group_policy(self, stored: StoredPolicy) -> GroupPolicy:
        key = (
            stored.group_id,
            hashlib.sha256(f"{stored.mode}\n{stored.document}".encode()).hexdigest(),
        )
        with self._lock:
            found = self._parsed.get(key)
        if found is None:
            found = parse_policy(stored.mode, json.loads(stored.document))
            with self._lock:
                if len(self._parsed) > 1000:
                    self._parsed.clear()
                self._parsed[key] = found
        return found

    # -- pulls -----------------------------------------------------------------------

    def check(
        self,
        cache: PullThroughCache,
        group_id: int,
        path: ProxyPath,
        reference: str,
        result: ManifestResult,
    ) -> Decision | None:
        """The policy's decision on serving ``result`` for a pull of ``reference``;
        ``None`` when the group checks nothing or the manifest is a signature artifact.

        :raises RegistryError: the signatures could not be fetched (upstream down and
            not cached): retryable, and no verdict is kept.
        """
        policy = self.group_policy(group_id)
        if policy.mode == "off":
            return None
        if policy.index_rule == "platforms" and _is_index(result.media_type):
            # Its platform manifests are checked as the client pulls them.
            return None
        trust, fingerprint = policy.trust(path.image, self.roots)
        key = (group_id, path.image, result.digest, fingerprint)
        verdict = self._known(key)
        if verdict is None:
            # Never kept for a signature artifact: a warm pull of an image skips parsing.
            if is_signature_artifact(reference, result.content):
                return None
            verdict = self._verify(cache, group_id, path, result.digest, trust)
            self._remember(key, verdict, save=True)
            if verdict.status is Status.VERIFIED and policy.index_rule == "index":
                self._vouch_for_children(group_id, path, result, fingerprint, verdict)
        self.metrics.signature_verdict(policy.mode, verdict.status.value)
        return Decision(policy.mode, verdict)

    def _known(self, key: _Key) -> Verdict | None:
        now = self._clock()
        with self._lock:
            found = self._verdicts.get(key)
            if found is not None:
                self._verdicts.move_to_end(key)
        if found is not None and self._fresh(*found, now):
            return found[0]
        with self.database.phase("reading a signature verdict"):
            row = self.records.verdict(*key)
        if row is None:
            return None
        verdict = Verdict.from_json(row.verdict)
        if not self._fresh(verdict, row.checked_at, now):
            return None
        self._remember(key, verdict, at=row.checked_at)
        return verdict

    def _fresh(self, verdict: Verdict, checked_at: dt.datetime, now: dt.datetime) -> bool:
        return verdict.status is Status.VERIFIED or now - checked_at < self.recheck

    def _remember(
        self, key: _Key, verdict: Verdict, *, save: bool = False, at: dt.datetime | None = None
    ) -> None:
        at = at or self._clock()
        with self._lock:
            self._verdicts[key] = (verdict, at)
            self._verdicts.move_to_end(key)
            while len(self._verdicts) > MEMORY_VERDICTS:
                self._verdicts.popitem(last=False)
        if save:
            with self.database.phase("saving a signature verdict"):
                self.records.save_verdict(*key, verdict.to_json(), at)

    def _vouch_for_children(
        self,
        group_id: int,
        path: ProxyPath,
        result: ManifestResult,
        fingerprint: str,
        verdict: Verdict,
    ) -> None:
        """The platform manifests of a verified index count as verified by it."""
        try:
            manifests = json.loads(result.content).get("manifests")
        except (ValueError, AttributeError):
            return
        if not isinstance(manifests, list):
            return
        by_index = dataclasses.replace(verdict, signer=f"{verdict.signer} (index {result.digest})")
        for entry in manifests[:256]:
            digest = entry.get("digest") if isinstance(entry, dict) else None
            if isinstance(digest, str):
                self._remember((group_id, path.image, digest, fingerprint), by_index, save=True)

    def _verify(
        self,
        cache: PullThroughCache,
        group_id: int,
        path: ProxyPath,
        digest: str,
        trust: TrustPolicy,
    ) -> Verdict:
        started = time.monotonic()
        if not trust.keys and not trust.identities:
            return Verdict(Status.INVALID, reason=f"no signer is trusted for {path.image}")
        problems: list[str] = []
        unreachable: list[RegistryError] = []
        layers = _unless_unreachable(
            lambda: self._signature_layers(cache, group_id, path, digest, problems), unreachable
        )
        bundles = _unless_unreachable(
            lambda: self._bundles(cache, group_id, path, digest, problems), unreachable
        )
        verdict = SignatureVerifier(trust).verify(digest, layers=layers, bundles=bundles)
        if unreachable and verdict.status is not Status.VERIFIED:
            # A signature that could not be fetched may be the one that counts: no
            # verdict yet, and the client retries.
            raise unreachable[0]
        if problems and verdict.status is not Status.VERIFIED:
            reasons = "; ".join([*([verdict.reason] if layers or bundles else []), *problems])
            verdict = Verdict(Status.INVALID, reason=reasons[:500])
        log.info(
            "signature of %s@%s for group %s: %s %s (%.0f ms)",
            path.image,
            digest,
            group_id,
            verdict.status.value,
            verdict.signer or verdict.reason,
            (time.monotonic() - started) * 1000,
        )
        return verdict

    def _signature_layers(
        self,
        cache: PullThroughCache,
        group_id: int,
        path: ProxyPath,
        digest: str,
        problems: list[str],
    ) -> list[SignatureLayer]:
        try:
            found = cache.get_manifest(
                group_id,
                path,
                signature_tag(digest),
                (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST),
            )
        except RegistryError as error:
            if error.code is ErrorCode.MANIFEST_UNKNOWN:
                return []
            raise
        try:
            descriptors = signature_layer_descriptors(found.content)
        except SignatureError as error:
            problems.append(str(error))
            return []
        layers = []
        for descriptor in descriptors:
            try:
                blob = self._blob(cache, group_id, path, descriptor)
                layers.append(signature_layer(descriptor, blob))
            except SignatureError as error:
                problems.append(str(error))
        return layers

    def _bundles(
        self,
        cache: PullThroughCache,
        group_id: int,
        path: ProxyPath,
        digest: str,
        problems: list[str],
    ) -> list[bytes]:
        referrers = cache.get_referrers(group_id, path, digest, BUNDLE_MEDIA_TYPE)
        bundles = []
        for descriptor in referrers.descriptors[:16]:
            try:
                manifest = cache.get_manifest(
                    group_id, path, descriptor["digest"], (MEDIA_TYPE_OCI_MANIFEST,)
                )
                layer = bundle_layer_descriptor(manifest.content)
                if layer is not None:
                    bundles.append(self._blob(cache, group_id, path, layer))
            except SignatureError as error:
                problems.append(str(error))
            except RegistryError as error:
                if error.code is not ErrorCode.MANIFEST_UNKNOWN:
                    raise
                problems.append(f"referrer {descriptor['digest']} is gone upstream")
        return bundles

    def _blob(
        self,
        cache: PullThroughCache,
        group_id: int,
        path: ProxyPath,
        descriptor: t.Mapping[str, t.Any],
    ) -> bytes:
        """A signature blob, through the cache (kept, so it serves offline)."""
        size, digest = descriptor.get("size"), descriptor.get("digest")
        if not isinstance(size, int) or not 0 <= size <= MAX_SIGNATURE_BLOB:
            raise _format_error(f"a signature blob of {size} bytes is not a signature")
        if not isinstance(digest, str):
            raise _format_error("a signature layer has no digest")
        found = cache.get_blob(group_id, path, digest, until_committed=True)
        if isinstance(found.location, Following):
            return b"".join(found.location.chunks)
        with cache.store.open(digest) as stored:
            return stored.read(MAX_SIGNATURE_BLOB + 1)

    # -- what the page and the API show ------------------------------------------------

    def image_states(
        self, group_id: int, images: t.Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], ImageState]:
        """The verification state of each ``(image, digest)`` under the group's current
        policy (inside a database phase)."""
        wanted = list(images)
        stored = self.records.policy(group_id)
        policy = self.default if stored is None else self._group_policy(stored)
        if policy.mode == "off":
            return {key: ImageState("not_checked") for key in wanted}
        found = self.records.latest_verdicts(group_id, wanted)
        states = {}
        for image, digest in wanted:
            row = found.get((image, digest))
            if row is None or row.fingerprint != policy.trust(image, self.roots)[1]:
                states[(image, digest)] = ImageState("not_checked")
                continue
            verdict = Verdict.from_json(row.verdict)
            states[(image, digest)] = ImageState(
                verdict.status.value, verdict.signer, verdict.reason
            )
        return states


_T = t.TypeVar("_T")


def _unless_unreachable(
    fetch: t.Callable[[], list[_T]], unreachable: list[RegistryError]
) -> list[_T]:
    """What ``fetch`` found; nothing, noted in ``unreachable``, when neither upstream
    nor the cache could answer (upstream down, and that artifact never cached)."""
    try:
        return fetch()
    except RegistryError as error:
        if error.code not in (ErrorCode.UNAVAILABLE, ErrorCode.TOOMANYREQUESTS):
            raise
        unreachable.append(error)
        return []


def _format_error(message: str) -> SignatureError:
    return SignatureFormatError(message)


def load_trust_root(
    *,
    trusted_root: str | None,
    roots: str | None,
    intermediates: str | None,
    rekor_keys: t.Sequence[str] = (),
) -> TrustRoot | None:
    """The instance's trust roots from the files the admin configured: a Sigstore
    ``trusted_root.json``, PEM roots and intermediates, Rekor public keys (PEM); their
    union. ``None`` when none is configured.

    :raises SignatureError: a file is not what its key says.
    """
    parts = []
    if trusted_root:
        with open(trusted_root, "rb") as file:
            parts.append(TrustRoot.from_trusted_root_json(file.read()))
    if roots or rekor_keys:

        def read(name: str | None) -> bytes:
            if not name:
                return b""
            with open(name, "rb") as file:
                return file.read()

        parts.append(
            TrustRoot.from_pem(
                roots=read(roots),
                intermediates=read(intermediates),
                log_keys=[read(name) for name in rekor_keys],
            )
        )
    if not parts:
        return None
    return TrustRoot(
        authorities=tuple(a for part in parts for a in part.authorities),
        logs=tuple(log for part in parts for log in part.logs),
    )
