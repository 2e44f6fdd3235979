"""Pushes of exact bytes to the upstream registry over plain HTTP: blobs, manifests by
tag or digest, and the OCI 1.1 artifacts cosign attaches to an image (a ``.sig`` tag of
simple-signing layers, a Sigstore bundle referrer with a ``subject``, and the referrers
tag index that registries without the referrers API are read through).

skopeo re-serializes nothing either, but it cannot push a manifest whose bytes were made
elsewhere; these requests can, which is what signature vectors need.
"""

from __future__ import annotations

import hashlib
import json
import typing as t
from pathlib import Path

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(document: t.Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def push_blob(base_url: str, repository: str, data: bytes) -> dict[str, t.Any]:
    """Upload ``data`` in one monolithic PUT; returns its descriptor (no media type)."""
    digest = digest_of(data)
    started = requests.post(f"{base_url}/v2/{repository}/blobs/uploads/", timeout=10)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    if location.startswith("/"):
        location = base_url + location
    separator = "&" if "?" in location else "?"
    done = requests.put(
        f"{location}{separator}digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=10,
    )
    assert done.status_code == 201, done.text
    return {"digest": digest, "size": len(data)}


def push_manifest(
    base_url: str, repository: str, reference: str, content: bytes, media_type: str
) -> str:
    """PUT ``content`` as it is under ``reference``; returns its digest."""
    response = requests.put(
        f"{base_url}/v2/{repository}/manifests/{reference}",
        data=content,
        headers={"Content-Type": media_type},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return digest_of(content)


def _empty_config(base_url: str, repository: str, artifact_type: str) -> dict[str, t.Any]:
    descriptor = push_blob(base_url, repository, b"{}")
    return {"mediaType": OCI_EMPTY, "artifactType": artifact_type, **descriptor}


def push_signature_tag(
    base_url: str,
    repository: str,
    signed_digest: str,
    layers: t.Sequence[tuple[bytes, t.Mapping[str, str]]],
    *,
    media_types: t.Sequence[str] | None = None,
) -> str:
    """cosign's legacy layout: a ``sha256-<hex>.sig`` manifest with one simple-signing
    layer per ``(payload, annotations)``; returns the manifest's digest. ``media_types``
    gives each layer another type (an attachment that is not a signature)."""
    config = canonical(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(p) for p, _ in layers]},
        }
    )
    config_descriptor = push_blob(base_url, repository, config)
    descriptors = []
    types = media_types or [SIMPLE_SIGNING] * len(layers)
    for (payload, layer_annotations), media_type in zip(layers, types, strict=True):
        descriptor = push_blob(base_url, repository, payload)
        descriptors.append(
            {"mediaType": media_type, **descriptor, "annotations": dict(layer_annotations)}
        )
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **config_descriptor,
            },
            "layers": descriptors,
        }
    )
    tag = signed_digest.replace(":", "-") + ".sig"
    return push_manifest(base_url, repository, tag, manifest, OCI_MANIFEST)


def referrer_manifest(
    base_url: str,
    repository: str,
    subject: t.Mapping[str, t.Any],
    artifact_type: str,
    layer_type: str,
    blob: bytes,
    annotations: t.Mapping[str, str] | None = None,
) -> tuple[bytes, dict[str, t.Any]]:
    """Push the blob and config of an OCI 1.1 artifact with ``subject``; returns the
    artifact's manifest bytes (not yet pushed) and its descriptor for a referrers index."""
    layer = {"mediaType": layer_type, **push_blob(base_url, repository, blob)}
    document: dict[str, t.Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": _empty_config(base_url, repository, artifact_type),
        "layers": [layer],
        "subject": dict(subject),
    }
    if annotations:
        document["annotations"] = dict(annotations)
    manifest = canonical(document)
    descriptor = {
        "mediaType": OCI_MANIFEST,
        "digest": digest_of(manifest),
        "size": len(manifest),
        "artifactType": artifact_type,
    }
    if annotations:
        descriptor["annotations"] = dict(annotations)
    return manifest, descriptor


def push_referrers(
    base_url: str,
    repository: str,
    subject: t.Mapping[str, t.Any],
    artifacts: t.Sequence[tuple[str, str, bytes]],
) -> list[dict[str, t.Any]]:
    """Push each ``(artifact type, layer type, blob)`` as a referrer of ``subject`` by
    digest, then the referrers tag index ``sha256-<hex>`` listing them, as OCI clients
    do on a registry without the referrers API; returns the descriptors."""
    descriptors = []
    for artifact_type, layer_type, blob in artifacts:
        manifest, descriptor = referrer_manifest(
            base_url, repository, subject, artifact_type, layer_type, blob
        )
        push_manifest(base_url, repository, descriptor["digest"], manifest, OCI_MANIFEST)
        descriptors.append(descriptor)
    index = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})
    push_manifest(base_url, repository, subject["digest"].replace(":", "-"), index, OCI_INDEX)
    return descriptors


def plant_blobs(storage_v2: Path, repository: str, digests: t.Iterable[str]) -> None:
    """Make distribution take blobs it was never sent as present in ``repository``: a
    placeholder file and the repository's link, in its filesystem storage. For the signed
    manifests of signature vectors, which ship without their image's layers: the registry
    then accepts the manifest's exact bytes, and serves the manifest (never these blobs)."""
    for digest in digests:
        algorithm, _, hex_digest = digest.partition(":")
        data = storage_v2 / "blobs" / algorithm / hex_digest[:2] / hex_digest / "data"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_bytes(b"placeholder: this vector ships without its layers")
        link = storage_v2 / "repositories" / repository / "_layers" / algorithm / hex_digest
        link.mkdir(parents=True, exist_ok=True)
        (link / "link").write_text(digest)


def push_vector_manifest(
    base_url: str, storage_v2: Path, repository: str, tag: str, manifest: bytes
) -> str:
    """Push a vector's signed manifest by its exact bytes (its blobs planted first)."""
    document = json.loads(manifest)
    blobs = [document["config"]["digest"], *(layer["digest"] for layer in document["layers"])]
    plant_blobs(storage_v2, repository, blobs)
    return push_manifest(base_url, repository, tag, manifest, document["mediaType"])
