"""Rekor (v1) transparency log entries: the signed entry timestamp (SET) that proves
when a signature was logged, the RFC 6962 inclusion proof and the checkpoint it leads
to, and the binding of the logged body to the signature being verified.

A SET is the log's signature over the RFC 8785 canonical JSON of
``{"body", "integratedTime", "logID", "logIndex"}``; the log is found by ``logID``
(sha256 of its key) among the policy's log keys, never fetched.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import typing as t

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .encoding import b64decode, canonical_json, json_object
from .errors import LogError, SignatureFormatError
from .keys import load_public_key, signature_verifies, spki_der
from .trust import LogKey, TrustRoot


@dataclasses.dataclass(frozen=True)
class InclusionProof:
    """The audit path from an entry's leaf to a tree head, and the signed checkpoint."""

    log_index: int
    tree_size: int
    root_hash: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str


@dataclasses.dataclass(frozen=True)
class LogEntry:
    """One Rekor entry as a signature carries it."""

    body: str  # base64 of the canonicalized entry, as logged and as the SET signs it
    integrated_time: int
    log_index: int
    log_id: bytes
    signed_entry_timestamp: bytes | None
    proof: InclusionProof | None = None
    #: A bundle's ``kindVersion``: what the entry says its body is (it must be).
    kind_version: tuple[str, str] | None = None

    @property
    def integrated_at(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.integrated_time, datetime.UTC)

    def body_object(self, kind: str, version: str) -> dict[str, t.Any]:
        """The logged body, which must be of ``kind`` and ``version``."""
        body = json_object(b64decode(self.body, what="log entry body"), what="log entry body")
        if (body.get("kind"), body.get("apiVersion")) != (kind, version):
            raise LogError(f"the log entry is not a {kind} {version}")
        if self.kind_version is not None and self.kind_version != (kind, version):
            raise LogError("the log entry's kindVersion does not match its body")
        return body


def _integer(value: object, what: str) -> int:
    """A JSON number, or a bundle's decimal string (protobuf's JSON form of int64)."""
    if isinstance(value, bool):
        raise SignatureFormatError(f"{what} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return int(value)
    raise SignatureFormatError(f"{what} is not an integer")


def cosign_bundle(annotation: str) -> LogEntry:
    """The ``dev.sigstore.cosign/bundle`` annotation of a legacy signature:
    ``{"SignedEntryTimestamp", "Payload": {"body", "integratedTime", "logIndex", "logID"}}``."""
    document = json_object(annotation, what="the Rekor bundle annotation")
    payload = document.get("Payload")
    if set(document) != {"SignedEntryTimestamp", "Payload"} or not isinstance(payload, dict):
        raise SignatureFormatError("the Rekor bundle annotation has unexpected fields")
    if set(payload) != {"body", "integratedTime", "logIndex", "logID"}:
        raise SignatureFormatError("the Rekor bundle payload has unexpected fields")
    if not isinstance(payload["body"], str) or not isinstance(payload["logID"], str):
        raise SignatureFormatError("the Rekor bundle payload has a field of the wrong type")
    try:
        log_id = bytes.fromhex(payload["logID"])
    except ValueError as error:
        raise SignatureFormatError("the Rekor log ID is not hex") from error
    return LogEntry(
        body=payload["body"],
        integrated_time=_integer(payload["integratedTime"], "integratedTime"),
        log_index=_integer(payload["logIndex"], "logIndex"),
        log_id=log_id,
        signed_entry_timestamp=b64decode(document["SignedEntryTimestamp"], what="the SET"),
    )


def bundle_entry(entry: t.Mapping[str, t.Any]) -> LogEntry:
    """One ``verificationMaterial.tlogEntries[]`` item of a Sigstore bundle."""
    try:
        promise = entry.get("inclusionPromise")
        proof = entry.get("inclusionProof")
        kind_version = entry["kindVersion"]
        if not isinstance(kind_version.get("kind"), str) or not isinstance(
            kind_version.get("version"), str
        ):
            raise SignatureFormatError("the tlog entry's kindVersion is not two strings")
        return LogEntry(
            body=entry["canonicalizedBody"],
            integrated_time=_integer(entry["integratedTime"], "integratedTime"),
            log_index=_integer(entry["logIndex"], "logIndex"),
            log_id=b64decode(entry["logId"]["keyId"], what="log ID"),
            signed_entry_timestamp=b64decode(promise["signedEntryTimestamp"], what="the SET")
            if promise
            else None,
            proof=InclusionProof(
                log_index=_integer(proof["logIndex"], "inclusion proof logIndex"),
                tree_size=_integer(proof["treeSize"], "treeSize"),
                root_hash=b64decode(proof["rootHash"], what="rootHash"),
                hashes=tuple(b64decode(h, what="proof hash") for h in proof["hashes"]),
                checkpoint=str(proof["checkpoint"]["envelope"]),
            )
            if proof
            else None,
            kind_version=(kind_version["kind"], kind_version["version"]),
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise SignatureFormatError(f"the tlog entry lacks {error}") from error


def verify_entry(entry: LogEntry, root: TrustRoot, *, require_proof: bool = False) -> LogKey:
    """Check ``entry``'s SET (required: it is what makes the integrated time trusted) and
    its inclusion proof and checkpoint when present (or required); the log's key."""
    log = root.log(entry.log_id, entry.integrated_at)
    if log is None:
        raise LogError("the entry is not from a configured transparency log")
    if entry.signed_entry_timestamp is None:
        raise LogError("the log entry has no signed entry timestamp")
    signed = canonical_json(
        {
            "body": entry.body,
            "integratedTime": entry.integrated_time,
            "logID": entry.log_id.hex(),
            "logIndex": entry.log_index,
        }
    )
    if not signature_verifies(log.key, entry.signed_entry_timestamp, signed):
        raise LogError("the signed entry timestamp does not verify with the log's key")
    if entry.proof is not None:
        _verify_inclusion(entry, entry.proof, log)
    elif require_proof:
        raise LogError("the log entry has no inclusion proof")
    return log


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _root_from_path(index: int, size: int, leaf: bytes, path: t.Sequence[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2: the root an audit path leads to from leaf ``index``."""
    if not 0 <= index < size:
        raise LogError("the inclusion proof's index is outside its tree")
    node, last, value = index, size - 1, leaf
    for sibling in path:
        if last == 0:
            raise LogError("the inclusion proof is longer than its tree is deep")
        if node % 2 == 1 or node == last:
            value = _node(sibling, value)
            if node % 2 == 0:
                while node % 2 == 0 and node != 0:
                    node, last = node >> 1, last >> 1
        else:
            value = _node(value, sibling)
        node, last = node >> 1, last >> 1
    if last != 0:
        raise LogError("the inclusion proof is shorter than its tree is deep")
    return value


def _verify_inclusion(entry: LogEntry, proof: InclusionProof, log: LogKey) -> None:
    leaf = hashlib.sha256(b"\x00" + b64decode(entry.body, what="log entry body")).digest()
    if _root_from_path(proof.log_index, proof.tree_size, leaf, proof.hashes) != proof.root_hash:
        raise LogError("the inclusion proof does not lead to its root hash")
    _verify_checkpoint(proof, log)


def _verify_checkpoint(proof: InclusionProof, log: LogKey) -> None:
    """The checkpoint is a signed note (``origin``, tree size, root hash, then a blank
    line and ``— <name> base64(key hint || signature)`` lines) over the same tree."""
    text, separator, signatures = proof.checkpoint.partition("\n\n")
    if not separator:
        raise LogError("the checkpoint is not a signed note")
    note = (text + "\n").encode()
    lines = text.split("\n")
    if len(lines) < 3 or lines[1] != str(proof.tree_size):
        raise LogError("the checkpoint is for another tree size")
    if b64decode(lines[2], what="checkpoint root hash") != proof.root_hash:
        raise LogError("the checkpoint is for another root hash")
    for line in signatures.split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014":
            continue
        blob = b64decode(parts[2], what="checkpoint signature")
        if blob[:4] == log.log_id[:4] and signature_verifies(log.key, blob[4:], note):
            return
    raise LogError("the checkpoint is not signed by the log's key")


def _pem_der(content: object) -> bytes:
    """DER of the key or certificate in a logged ``publicKey``/``verifier`` (base64 PEM)."""
    pem = b64decode(content, what="the logged public key")
    if b"CERTIFICATE" in pem:
        try:
            certificate = x509.load_pem_x509_certificate(pem)
            return certificate.public_bytes(serialization.Encoding.DER)
        except ValueError as error:
            raise SignatureFormatError("the logged certificate is not PEM") from error
    return spki_der(load_public_key(pem))


def _sha256_field(value: t.Any, what: str) -> str:
    if not isinstance(value, dict) or value.get("algorithm") != "sha256":
        raise LogError(f"the logged {what} is not a sha256 hash")
    return str(value.get("value"))


def check_hashedrekord(entry: LogEntry, *, payload: bytes, signature: bytes, signer: bytes) -> None:
    """The entry logs this signature over this payload by ``signer`` (DER of the leaf
    certificate, or of the public key's SubjectPublicKeyInfo)."""
    body = entry.body_object("hashedrekord", "0.0.1")
    try:
        spec = body["spec"]
        logged_hash = _sha256_field(spec["data"]["hash"], "payload hash")
        logged_signature = b64decode(spec["signature"]["content"], what="the logged signature")
        logged_signer = _pem_der(spec["signature"]["publicKey"]["content"])
    except (KeyError, TypeError) as error:
        raise SignatureFormatError(f"the log entry lacks {error}") from error
    if logged_hash != hashlib.sha256(payload).hexdigest():
        raise LogError("the log entry is for another payload")
    if logged_signature != signature:
        raise LogError("the log entry is for another signature")
    if logged_signer != signer:
        raise LogError("the log entry is for another key")


def check_dsse(entry: LogEntry, *, payload: bytes, signature: bytes, signer: bytes) -> None:
    """The entry logs this DSSE envelope's one signature over ``payload`` by ``signer``."""
    body = entry.body_object("dsse", "0.0.1")
    try:
        spec = body["spec"]
        logged_hash = _sha256_field(spec["payloadHash"], "payload hash")
        signatures = spec["signatures"]
        if not isinstance(signatures, list) or len(signatures) != 1:
            raise LogError("the log entry does not log exactly one signature")
        logged_signature = b64decode(signatures[0]["signature"], what="the logged signature")
        logged_signer = _pem_der(signatures[0]["verifier"])
    except (KeyError, TypeError) as error:
        raise SignatureFormatError(f"the log entry lacks {error}") from error
    if logged_hash != hashlib.sha256(payload).hexdigest():
        raise LogError("the log entry is for another statement")
    if logged_signature != signature:
        raise LogError("the log entry is for another signature")
    if logged_signer != signer:
        raise LogError("the log entry is for another certificate")
