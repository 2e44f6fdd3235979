"""skopeo and podman against a plain registry (no platform in between)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import images
from tests.support.clients import Podman, Skopeo, describe
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e


def test_skopeo_copy_to_dir_and_oci(upstream: Registry, skopeo: Skopeo, tmp_path: Path) -> None:
    index = images.build_index("clients-index", layer_sizes=(1000, 2000))
    pushed = images.push(index, upstream, "support/clients", "multi", workdir=tmp_path)

    result, target = skopeo.copy_to_dir(f"{upstream.host}/support/clients:multi")
    assert result.returncode == 0, describe(result)
    amd64 = pushed.child("amd64")
    assert (target / "manifest.json").read_bytes() == amd64.manifest
    for digest in amd64.blob_digests:
        assert (target / digest[7:]).read_bytes() == upstream.read_blob(digest)

    result, layout = skopeo.copy_to_oci(f"{upstream.host}/support/clients:multi")
    assert result.returncode == 0, describe(result)
    for digest in (pushed.digest, *pushed.blob_digests):
        assert (layout / "blobs" / "sha256" / digest[7:]).exists()


def test_podman_pulls_arm64_from_index(upstream: Registry, podman: Podman, tmp_path: Path) -> None:
    index = images.build_index("clients-podman", layer_sizes=(1000,))
    pushed = images.push(index, upstream, "support/podman", "multi", workdir=tmp_path)
    reference = f"{upstream.host}/support/podman:multi"
    result = podman.pull(reference, arch="arm64")
    assert result.returncode == 0, describe(result)
    inspected = podman.image_inspect(reference)
    assert inspected["Architecture"] == "arm64"
    assert (
        f"{upstream.host}/support/podman@{pushed.child('arm64').digest}" in inspected["RepoDigests"]
    )
