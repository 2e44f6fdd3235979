"""Deterministic images, pushed with skopeo into a real registry."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.support import images
from tests.support.registry import Registry


def test_same_seed_same_bytes_new_seed_new_digests() -> None:
    first = images.build_image("seed-a", layer_sizes=(1000, 2000))
    again = images.build_image("seed-a", layer_sizes=(1000, 2000))
    other = images.build_image("seed-b", layer_sizes=(1000, 2000))
    assert first.manifest == again.manifest
    assert [b.data for b in first.blobs] == [b.data for b in again.blobs]
    assert first.digest != other.digest
    assert not {b.digest for b in first.layers} & {b.digest for b in other.layers}


def test_layer_is_a_deterministic_incompressible_tar() -> None:
    image = images.build_image("tar", layer_sizes=(200_000,))
    layer = image.layers[0]
    assert layer.size > 200_000  # random bytes do not compress
    assert layer.data[4:8] == b"\0\0\0\0"  # gzip mtime 0
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.data))) as tar:
        (member,) = tar.getmembers()
        assert (member.uid, member.gid, member.mtime, member.size) == (0, 0, 1_700_000_000, 200_000)
    config = json.loads(image.config.data)
    assert config["architecture"] == "amd64"
    assert config["rootfs"]["diff_ids"][0] == images.sha256_digest(gzip.decompress(layer.data))


def test_index_children_carry_platforms() -> None:
    index = images.build_index("idx")
    document = json.loads(index.manifest)
    assert document["mediaType"] == images.OCI_INDEX
    platforms = [m["platform"] for m in document["manifests"]]
    assert platforms == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    assert json.loads(index.image("arm64").config.data)["architecture"] == "arm64"
    assert index.image("amd64").digest != index.image("arm64").digest


def test_write_layout(tmp_path: Path) -> None:
    image = images.build_image("layout", layer_sizes=(100,))
    images.write_layout(tmp_path, "one", image)
    images.write_layout(tmp_path, "two", image)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [
        "one",
        "two",
    ]
    for blob in image.blobs:
        assert (tmp_path / "blobs" / "sha256" / blob.digest[7:]).read_bytes() == blob.data


@pytest.mark.e2e
def test_push_lands_in_registry(upstream: Registry, tmp_path: Path) -> None:
    image = images.build_image("push-oci", layer_sizes=(300_000, 600_000))
    since = upstream.mark()
    pushed = images.push(image, upstream, "support/push-oci", "v1", workdir=tmp_path)
    assert pushed.digest == image.digest
    assert pushed.manifest == image.manifest
    assert pushed.media_type == images.OCI_MANIFEST
    assert pushed.config_digest == image.config.digest
    assert pushed.layer_digests == tuple(layer.digest for layer in image.layers)
    for blob in image.blobs:
        assert upstream.read_blob(blob.digest) == blob.data
    assert upstream.count("PUT", repository="support/push-oci", kind="manifests", since=since) == 1


@pytest.mark.e2e
def test_push_docker_format(upstream: Registry, tmp_path: Path) -> None:
    image = images.build_image("push-v2s2", layer_sizes=(1000, 2000))
    pushed = images.push(
        image, upstream, "support/push-v2s2", "v1", workdir=tmp_path, docker_format=True
    )
    assert pushed.media_type == images.DOCKER_MANIFEST
    assert pushed.digest != image.digest
    assert pushed.layer_digests == tuple(layer.digest for layer in image.layers)


@pytest.mark.e2e
def test_push_index(upstream: Registry, tmp_path: Path) -> None:
    index = images.build_index("push-index")
    pushed = images.push(index, upstream, "support/push-index", "multi", workdir=tmp_path)
    assert pushed.is_index and pushed.digest == index.digest
    assert set(pushed.children) == {"linux/amd64", "linux/arm64/v8"}
    assert pushed.child("arm64").digest == index.image("arm64").digest
    assert set(pushed.blob_digests) == {b.digest for b in index.blobs}
