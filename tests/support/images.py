"""Deterministic test images built with the standard library, pushed with skopeo.

The same seed always yields the same bytes (fixed mtimes, uid 0, gzip mtime 0); a new
seed yields new digests, which is how a test moves a tag upstream. Layers hold seeded
pseudo-random bytes, so they do not compress and their size on the wire is about the
size asked for.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
import typing as t
from pathlib import Path

if t.TYPE_CHECKING:
    from .registry import Registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
#: Every manifest type, as a cache must ask its upstream.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

_EPOCH = 1_700_000_000  # fixed mtime for every tar entry
_CREATED = "2023-11-14T22:13:20Z"

MiB = 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(document: t.Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


@dataclasses.dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes = dataclasses.field(repr=False)

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, t.Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclasses.dataclass(frozen=True)
class Image:
    """One single-platform OCI image."""

    manifest: bytes = dataclasses.field(repr=False)
    config: Blob
    layers: tuple[Blob, ...]
    architecture: str
    os: str = "linux"
    variant: str | None = None
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)

    def platform(self) -> dict[str, str]:
        platform = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            platform["variant"] = self.variant
        return platform


@dataclasses.dataclass(frozen=True)
class Index:
    """A multi-platform OCI image index whose children are real images."""

    manifest: bytes = dataclasses.field(repr=False)
    images: tuple[Image, ...]
    media_type: str = OCI_INDEX

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return tuple(blob for image in self.images for blob in image.blobs)

    def image(self, architecture: str) -> Image:
        for image in self.images:
            if image.architecture == architecture:
                return image
        raise KeyError(architecture)


def _layer(seed: str, size: int, name: str) -> tuple[Blob, str]:
    """A gzipped tar holding one file of ``size`` seeded random bytes.

    :return: the blob and the diff ID (digest of the uncompressed tar).
    """
    payload = random.Random(seed).randbytes(size)
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = _EPOCH
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(payload))
    raw = tar_buffer.getvalue()
    gz_buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=gz_buffer, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(raw)
    return Blob(OCI_LAYER, gz_buffer.getvalue()), sha256_digest(raw)


def build_image(
    seed: str | int,
    *,
    layer_sizes: t.Sequence[int] = (1 * MiB, 2 * MiB),
    architecture: str = "amd64",
    variant: str | None = None,
    os: str = "linux",
) -> Image:
    """Build a deterministic image with one layer per entry of ``layer_sizes``."""
    layers = []
    diff_ids = []
    for number, size in enumerate(layer_sizes):
        blob, diff_id = _layer(f"{seed}/{architecture}/{number}", size, f"data/layer-{number}.bin")
        layers.append(blob)
        diff_ids.append(diff_id)
    config_document: dict[str, t.Any] = {
        "architecture": architecture,
        "os": os,
        "created": _CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"test.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": _CREATED, "created_by": f"test layer {n}"} for n in range(len(layers))
        ],
    }
    if variant:
        config_document["variant"] = variant
    config = Blob(OCI_CONFIG, _canonical(config_document))
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
        }
    )
    return Image(manifest, config, tuple(layers), architecture, os, variant)


def build_index(
    seed: str | int,
    *,
    platforms: t.Sequence[tuple[str, str | None]] = (("amd64", None), ("arm64", "v8")),
    layer_sizes: t.Sequence[int] = (256 * 1024, 512 * 1024),
) -> Index:
    """Build an image index with one real image per ``(architecture, variant)``."""
    images = tuple(
        build_image(seed, layer_sizes=layer_sizes, architecture=arch, variant=variant)
        for arch, variant in platforms
    )
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": image.media_type,
                    "digest": image.digest,
                    "size": len(image.manifest),
                    "platform": image.platform(),
                }
                for image in images
            ],
        }
    )
    return Index(manifest, images)


def write_layout(directory: Path, tag: str, artifact: Image | Index) -> Path:
    """Write (or add to) an OCI image layout so that ``oci:DIRECTORY:TAG`` names
    ``artifact``."""
    blobs_dir = directory / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    everything: list[tuple[str, bytes]] = [(artifact.digest, artifact.manifest)]
    if isinstance(artifact, Index):
        everything += [(image.digest, image.manifest) for image in artifact.images]
    everything += [(blob.digest, blob.data) for blob in artifact.blobs]
    for digest, data in everything:
        path = blobs_dir / digest.partition(":")[2]
        if not path.exists():
            path.write_bytes(data)
    index_path = directory / "index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
    else:
        index = {"schemaVersion": 2, "manifests": []}
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ]
    index["manifests"].append(
        {
            "mediaType": artifact.media_type,
            "digest": artifact.digest,
            "size": len(artifact.manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    index_path.write_text(json.dumps(index))
    return directory


@dataclasses.dataclass(frozen=True)
class Pushed:
    """What the upstream stores after a push, read back from its storage.

    With ``--format v2s2`` the manifest (and so its digest) differs from the built one;
    blob digests do not change.
    """

    repository: str
    tag: str
    digest: str
    manifest: bytes = dataclasses.field(repr=False)
    media_type: str
    config_digest: str | None
    layer_digests: tuple[str, ...]
    #: For an index: ``"linux/arm64"`` etc. to the child image.
    children: dict[str, Pushed] = dataclasses.field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def blob_digests(self) -> tuple[str, ...]:
        if self.is_index:
            return tuple(d for child in self.children.values() for d in child.blob_digests)
        assert self.config_digest is not None
        return (self.config_digest, *self.layer_digests)

    def child(self, architecture: str) -> Pushed:
        for key, child in self.children.items():
            if key.split("/")[1] == architecture:
                return child
        raise KeyError(architecture)


def read_pushed(registry: Registry, repository: str, tag: str) -> Pushed:
    """Describe what ``repository:tag`` is on the upstream, from its storage on disk
    (no request reaches the registry, so its access log stays as it was)."""
    digest = registry.tag_digest(repository, tag)
    return _describe(registry, repository, tag, digest)


def _describe(registry: Registry, repository: str, tag: str, digest: str) -> Pushed:
    manifest = registry.read_blob(digest)
    document = json.loads(manifest)
    media_type = document.get("mediaType", OCI_MANIFEST)
    if "manifests" in document:
        children = {}
        for entry in document["manifests"]:
            platform = entry.get("platform", {})
            key = f"{platform.get('os')}/{platform.get('architecture')}"
            if platform.get("variant"):
                key += f"/{platform['variant']}"
            children[key] = _describe(registry, repository, tag, entry["digest"])
        return Pushed(repository, tag, digest, manifest, media_type, None, (), children)
    return Pushed(
        repository,
        tag,
        digest,
        manifest,
        media_type,
        document["config"]["digest"],
        tuple(layer["digest"] for layer in document["layers"]),
    )


def push(
    artifact: Image | Index,
    registry: Registry,
    repository: str,
    tag: str,
    *,
    workdir: Path,
    docker_format: bool = False,
    creds: tuple[str, str] | None = None,
    timeout: float = 120,
) -> Pushed:
    """Push ``artifact`` to ``registry`` as ``repository:tag`` with ``skopeo copy``.

    :param workdir: the OCI layout is written under it.
    :param docker_format: convert to Docker media types (``--format v2s2``).
    :param creds: ``(username, password)`` when the upstream wants auth.
    :raises subprocess.CalledProcessError: skopeo failed; its output is in the error.
    """
    layout = write_layout(workdir / "oci-layouts" / f"{artifact.digest[7:19]}", tag, artifact)
    argv = [
        "skopeo",
        "--command-timeout",
        f"{int(timeout)}s",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--authfile",
        str(workdir / "push-auth.json"),
    ]
    if isinstance(artifact, Index):
        argv.append("--all")
    if docker_format:
        argv += ["--format", "v2s2"]
    if creds is not None:
        argv += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    argv += [f"oci:{layout}:{tag}", f"docker://{registry.host}/{repository}:{tag}"]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout + 10, env=_skopeo_env(workdir)
    )
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, argv, output=result.stdout, stderr=result.stderr
        )
    return read_pushed(registry, repository, tag)


def _skopeo_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("XDG_RUNTIME_DIR", str(workdir))
    return env
