"""Sigstore bundles v0.3, as cosign v3 attaches them: an OCI referrer of the image
(``artifactType`` and one layer of the bundle media type) whose blob is the bundle.

The bundle holds a DSSE envelope over an in-toto statement whose subject is the image
digest; the signature is over DSSE's pre-authentication encoding (PAE) of the payload,
not the payload itself. The signer is a Fulcio leaf (checked like a legacy keyless
signature) or a public key the policy trusts; the Rekor entry must carry a SET and an
inclusion proof with a signed checkpoint. Message-signature bundles sign a blob, not
an image, and are not accepted; nor are Rekor v2 entries or RFC 3161 timestamps yet.
"""

from __future__ import annotations

import typing as t

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .certificates import load_certificate, public_key, trusted_identity
from .encoding import b64decode, json_object
from .errors import LogError, MismatchError, SignatureError, SignatureFormatError
from .keys import signature_verifies, spki_der
from .rekor import bundle_entry, check_dsse, verify_entry
from .trust import TrustPolicy
from .verdict import Accepted

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO = "application/vnd.in-toto+json"
STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")


def bundle_layer_descriptor(manifest: bytes) -> dict[str, t.Any] | None:
    """The bundle layer of a referrer manifest, or ``None`` when the referrer is some
    other artifact (an SBOM, a legacy attestation)."""
    document = json_object(manifest, what="the referrer manifest")
    artifact_type = document.get("artifactType") or (document.get("config") or {}).get(
        "artifactType"
    )
    layers = document.get("layers")
    if artifact_type != BUNDLE_MEDIA_TYPE or not isinstance(layers, list) or len(layers) != 1:
        return None
    layer = layers[0]
    if not isinstance(layer, dict) or layer.get("mediaType") != BUNDLE_MEDIA_TYPE:
        return None
    return layer


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding, the bytes a DSSE signature is over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def verify_bundle(raw: bytes, digest: str, policy: TrustPolicy) -> Accepted:
    """Who signed ``digest`` in the bundle ``raw``, if the policy trusts them; raises a
    :class:`~.errors.SignatureError` with the reason otherwise. The signing time is the
    log's: a bundle without a trusted log entry does not count."""
    try:
        return _verify(json_object(raw, what="the bundle"), digest, policy)
    except (KeyError, TypeError, AttributeError) as error:
        raise SignatureFormatError(f"the bundle lacks {error}") from error


def _verify(bundle: dict[str, t.Any], digest: str, policy: TrustPolicy) -> Accepted:
    if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise SignatureFormatError(f"the bundle's media type is not {BUNDLE_MEDIA_TYPE}")
    if "dsseEnvelope" not in bundle:
        raise SignatureFormatError("only DSSE bundles sign an image (this is a message signature)")
    envelope = bundle["dsseEnvelope"]
    if envelope["payloadType"] != IN_TOTO:
        raise SignatureFormatError(f"the DSSE payload type is not {IN_TOTO}")
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise SignatureFormatError("the DSSE envelope does not have exactly one signature")
    statement = b64decode(envelope["payload"], what="the DSSE payload")
    signature = b64decode(signatures[0]["sig"], what="the DSSE signature")
    signed = pae(IN_TOTO, statement)

    material = bundle["verificationMaterial"]
    leaf: x509.Certificate | None = None
    name: str | None = None
    if "certificate" in material:
        leaf = load_certificate(b64decode(material["certificate"]["rawBytes"], what="certificate"))
        if not signature_verifies(public_key(leaf), signature, signed):
            raise MismatchError("the DSSE signature does not verify with its certificate's key")
        signer_der = leaf.public_bytes(Encoding.DER)
    elif "publicKey" in material:
        key = next((k for k in policy.keys if signature_verifies(k.key, signature, signed)), None)
        if key is None:
            raise MismatchError("no trusted key verifies the DSSE signature")
        signer_der, name = spki_der(key.key), key.name
    else:
        raise SignatureFormatError("the bundle has neither a certificate nor a public key")

    if policy.roots is None or not policy.roots.logs:
        raise LogError("no transparency log key is configured to check the bundle's entry")
    entries = material.get("tlogEntries") or []
    if not entries:
        raise LogError("the bundle has no transparency log entry")
    failures: list[str] = []
    for item in entries:
        try:
            entry = bundle_entry(item)
            verify_entry(entry, policy.roots, require_proof=True)
            check_dsse(entry, payload=statement, signature=signature, signer=signer_der)
            break
        except SignatureError as error:
            failures.append(str(error))
    else:
        raise LogError("; ".join(failures))

    if leaf is not None:
        name = trusted_identity(leaf, [], policy, at=entry.integrated_at)
    check_statement(statement, digest, policy)
    assert name is not None
    return Accepted(signer=name, signed_at=entry.integrated_time)


def check_statement(statement: bytes, digest: str, policy: TrustPolicy) -> None:
    """The in-toto statement names ``digest`` among its subjects (``name`` is not
    compared, as cosign does not), with a predicate type the policy accepts."""
    document = json_object(statement, what="the in-toto statement")
    if document.get("_type") not in STATEMENT_TYPES:
        raise SignatureFormatError("the DSSE payload is not an in-toto statement")
    predicate_type = document.get("predicateType")
    if policy.predicate_types is not None and predicate_type not in policy.predicate_types:
        raise MismatchError(f"the statement's predicate type {predicate_type} is not accepted")
    algorithm, _, hex_digest = digest.partition(":")
    subjects = document.get("subject")
    if not isinstance(subjects, list):
        raise SignatureFormatError("the in-toto statement has no subjects")
    for subject in subjects:
        digests = subject.get("digest") if isinstance(subject, dict) else None
        if isinstance(digests, dict) and digests.get(algorithm) == hex_digest:
            return
    raise MismatchError(f"no subject of the statement is {digest}")
