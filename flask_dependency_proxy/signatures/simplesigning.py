"""Cosign's legacy signatures: the ``sha256-<hex>.sig`` tag beside an image, whose
manifest has one layer per signature. A layer's blob is a simple-signing JSON payload
naming the signed manifest digest; its annotations carry the signature and, for
keyless signing, the Fulcio certificate, its chain and the Rekor SET.

The payload is signed as the exact blob bytes and is read as JSON only after the
signature verifies (cosign's ``specs/SIGNATURE_SPEC.md``).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import typing as t

from cryptography.hazmat.primitives.serialization import Encoding

from .certificates import load_certificate, load_certificates, public_key, trusted_identity
from .encoding import b64decode, json_object
from .errors import LogError, MismatchError, SignatureFormatError
from .keys import signature_verifies, spki_der
from .rekor import check_hashedrekord, cosign_bundle, verify_entry
from .trust import TrustPolicy
from .verdict import Accepted

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE = "dev.cosignproject.cosign/signature"
CERTIFICATE = "dev.sigstore.cosign/certificate"
CHAIN = "dev.sigstore.cosign/chain"
BUNDLE = "dev.sigstore.cosign/bundle"
#: What ``critical.type`` says in every cosign image signature.
SIGNATURE_TYPE = "cosign container image signature"


def signature_tag(digest: str) -> str:
    """The tag cosign stores an image's signatures under: ``sha256-<hex>.sig``."""
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}-{hex_digest}.sig"


@dataclasses.dataclass(frozen=True)
class SignatureLayer:
    """One layer of a ``.sig`` manifest with its blob: the media type, the payload
    bytes and the layer's annotations."""

    media_type: str
    payload: bytes
    annotations: t.Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def claims_signature(self) -> bool:
        """Whether the layer presents itself as a signature (then it must be one)."""
        return self.media_type == SIMPLE_SIGNING or SIGNATURE in self.annotations


def signature_layer_descriptors(manifest: bytes) -> list[dict[str, t.Any]]:
    """The layers of a ``.sig`` manifest that present themselves as signatures: the
    descriptors whose blobs the caller fetches for :func:`signature_layer`."""
    document = json_object(manifest, what="the signature manifest")
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise SignatureFormatError("the signature manifest has no layers")
    found = []
    for layer in layers:
        if not (
            isinstance(layer, dict)
            and isinstance(layer.get("mediaType"), str)
            and isinstance(layer.get("digest"), str)
            and isinstance(layer.get("size"), int)
        ):
            raise SignatureFormatError("the signature manifest has a malformed layer")
        annotations = layer.get("annotations") or {}
        if layer["mediaType"] == SIMPLE_SIGNING or SIGNATURE in annotations:
            found.append(layer)
    return found


def signature_layer(descriptor: t.Mapping[str, t.Any], blob: bytes) -> SignatureLayer:
    """The layer of ``descriptor`` with its fetched ``blob``, which must be the bytes
    the descriptor names (digest and size)."""
    algorithm, _, expected = str(descriptor.get("digest", "")).partition(":")
    if (
        algorithm not in ("sha256", "sha512")
        or hashlib.new(algorithm, blob).hexdigest() != expected
    ):
        raise SignatureFormatError("the signature blob does not match its descriptor's digest")
    if descriptor.get("size") != len(blob):
        raise SignatureFormatError("the signature blob does not match its descriptor's size")
    annotations = descriptor.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise SignatureFormatError("the signature layer's annotations are not strings")
    return SignatureLayer(str(descriptor.get("mediaType")), blob, dict(annotations))


def signed_digest(payload: bytes) -> str:
    """The manifest digest a simple-signing payload signs (``critical.image.
    docker-manifest-digest``); the payload must be such a document, with no unknown
    field in ``critical``. ``docker-reference`` is not compared: cosign writes the
    name it signed under, not the name a cache is reached by."""
    document = json_object(payload, what="the signed payload")
    critical = document.get("critical")
    optional = document.get("optional")
    if not isinstance(critical, dict) or set(critical) != {"identity", "image", "type"}:
        raise SignatureFormatError("the signed payload is not a cosign simple-signing document")
    if critical["type"] != SIGNATURE_TYPE:
        raise SignatureFormatError(f"the signed payload's type is not {SIGNATURE_TYPE!r}")
    image, identity = critical["image"], critical["identity"]
    if not (
        isinstance(image, dict)
        and isinstance(image.get("docker-manifest-digest"), str)
        and isinstance(identity, dict)
        and isinstance(identity.get("docker-reference"), str)
        and (optional is None or isinstance(optional, dict))
    ):
        raise SignatureFormatError("the signed payload is not a cosign simple-signing document")
    return str(image["docker-manifest-digest"])


def verify_layer(
    layer: SignatureLayer, digest: str, policy: TrustPolicy, *, now: datetime.datetime
) -> Accepted:
    """Who signed ``digest`` in ``layer``, if the policy trusts them; raises a
    :class:`~.errors.SignatureError` with the reason otherwise."""
    if layer.media_type != SIMPLE_SIGNING:
        raise SignatureFormatError(
            f"media type {layer.media_type} is not a cosign simple-signing payload"
        )
    if SIGNATURE not in layer.annotations:
        raise SignatureFormatError("the layer has no signature annotation")
    signature = b64decode(layer.annotations[SIGNATURE], what="the signature")
    certificate = layer.annotations.get(CERTIFICATE)
    if certificate:
        leaf = load_certificate(certificate.encode())
        if not signature_verifies(public_key(leaf), signature, layer.payload):
            raise MismatchError("the signature does not verify with its certificate's key")
        signer_der = leaf.public_bytes(Encoding.DER)
        name = None
    else:
        signer = next(
            (k for k in policy.keys if signature_verifies(k.key, signature, layer.payload)), None
        )
        if signer is None:
            raise MismatchError("no trusted key verifies the signature")
        signer_der, name = spki_der(signer.key), signer.name
    signed_at, at = None, now
    if policy.roots is not None and policy.roots.logs:
        if BUNDLE not in layer.annotations:
            raise LogError("the signature has no Rekor entry (dev.sigstore.cosign/bundle)")
        entry = cosign_bundle(layer.annotations[BUNDLE])
        verify_entry(entry, policy.roots)
        check_hashedrekord(entry, payload=layer.payload, signature=signature, signer=signer_der)
        signed_at, at = entry.integrated_time, entry.integrated_at
    if certificate:
        chain = (
            load_certificates(layer.annotations[CHAIN].encode())
            if CHAIN in layer.annotations
            else []
        )
        name = trusted_identity(leaf, chain[:-1], policy, at=at)
    signed = signed_digest(layer.payload)
    if signed != digest:
        raise MismatchError(f"the signature signs {signed}, not {digest}")
    assert name is not None
    return Accepted(signer=name, signed_at=signed_at)
