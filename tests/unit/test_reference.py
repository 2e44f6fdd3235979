"""Reference grammar: what reaches storage, SQL and upstream is validated here first."""

from __future__ import annotations

import json

import pytest

from flask_dependency_proxy.oci.errors import ErrorCode, RegistryError
from flask_dependency_proxy.oci.reference import (
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    accepts,
    default_platform_manifest,
    is_valid_tag,
    merge_accept,
    parse_proxy_path,
    validate_digest,
    validate_reference,
)

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("name", "group", "image"),
    [
        ("acme/dependency_proxy/containers/alpine", "acme", "alpine"),
        ("Acme/Team/dependency_proxy/containers/bitnami/redis", "acme/team", "bitnami/redis"),
        ("a/dependency_proxy/containers/x.y__z-1/w", "a", "x.y__z-1/w"),
        ("a/dependency_proxy/containers/ghcr.io/org/app", "a", "ghcr.io/org/app"),
    ],
)
def test_parse_proxy_path(name: str, group: str, image: str) -> None:
    """The parser keeps the image name as written; ``library/`` belongs to an upstream."""
    path = parse_proxy_path(name)
    assert (path.group_path, path.image) == (group, image)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("acme/alpine", ErrorCode.NAME_UNKNOWN),
        ("acme/dependency_proxy/containers/Alpine", ErrorCode.NAME_INVALID),
        ("acme/dependency_proxy/containers/../etc", ErrorCode.NAME_INVALID),
        ("acme/dependency_proxy/containers/a//b", ErrorCode.NAME_INVALID),
        ("acme/dependency_proxy/containers/-a", ErrorCode.NAME_INVALID),
        ("../x/dependency_proxy/containers/alpine", ErrorCode.NAME_INVALID),
        ("acme/dependency_proxy/containers/" + "a" * 256, ErrorCode.NAME_INVALID),
        ("acme/dependency_proxy/containers/a%2fb", ErrorCode.NAME_INVALID),
    ],
)
def test_parse_proxy_path_rejects(name: str, code: ErrorCode) -> None:
    with pytest.raises(RegistryError) as info:
        parse_proxy_path(name)
    assert info.value.code is code


@pytest.mark.parametrize(
    "ref", ["latest", "v1.2.3-rc_1", "_x", "A" * 128, DIGEST, "sha512:" + "b" * 128]
)
def test_valid_references(ref: str) -> None:
    assert validate_reference(ref) == ref


@pytest.mark.parametrize(
    ("ref", "code", "status"),
    [
        # Not a tag: no manifest can exist under it, so it is unknown, as OCI clients expect.
        ("-latest", ErrorCode.MANIFEST_UNKNOWN, 404),
        (".INVALID_MANIFEST_NAME", ErrorCode.MANIFEST_UNKNOWN, 404),
        ("A" * 129, ErrorCode.MANIFEST_UNKNOWN, 404),
        ("a/b", ErrorCode.MANIFEST_UNKNOWN, 404),
        ("sha256:" + "A" * 64, ErrorCode.DIGEST_INVALID, 400),
        ("sha256:abc", ErrorCode.DIGEST_INVALID, 400),
        ("md5:" + "a" * 32, ErrorCode.DIGEST_INVALID, 400),
        ("sha256:" + "a" * 64 + "\n", ErrorCode.DIGEST_INVALID, 400),
    ],
)
def test_invalid_references(ref: str, code: ErrorCode, status: int) -> None:
    with pytest.raises(RegistryError) as info:
        validate_reference(ref)
    assert info.value.code is code
    assert info.value.status == status


def test_validate_digest_rejects_tag() -> None:
    with pytest.raises(RegistryError) as info:
        validate_digest("latest")
    assert info.value.code is ErrorCode.DIGEST_INVALID


def test_merge_accept_keeps_every_line_in_order() -> None:
    lines = [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json; q=0.5, */*",
        "application/vnd.oci.image.manifest.v1+json",
    ]
    assert merge_accept(lines) == [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "*/*",
    ]


def test_accepts_only_what_the_client_listed() -> None:
    narrow = merge_accept([MEDIA_TYPE_DOCKER_MANIFEST])
    assert accepts(narrow, MEDIA_TYPE_DOCKER_MANIFEST)
    assert not accepts(narrow, MEDIA_TYPE_OCI_INDEX)
    assert accepts(merge_accept(["*/*"]), MEDIA_TYPE_OCI_INDEX)


def test_default_platform_manifest_picks_linux_amd64() -> None:
    arm, amd = "sha256:" + "b" * 64, "sha256:" + "c" * 64
    manifest_list = {
        "mediaType": MEDIA_TYPE_DOCKER_LIST,
        "manifests": [
            {"digest": arm, "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": amd, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    assert default_platform_manifest(json.dumps(manifest_list).encode()) == amd


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"manifests": "x"}',
        b'{"manifests": [{"digest": "../x", '
        b'"platform": {"os": "linux", "architecture": "amd64"}}]}',
        b'{"manifests": [{"digest": "sha256:' + b"d" * 64 + b'", "platform": {"os": "windows"}}]}',
    ],
)
def test_default_platform_manifest_ignores_what_is_not_a_valid_entry(content: bytes) -> None:
    assert default_platform_manifest(content) is None


def test_is_valid_tag() -> None:
    assert is_valid_tag("1.0-rc_1")
    assert not is_valid_tag("../etc")
    assert not is_valid_tag("x" * 129)


def test_error_envelope() -> None:
    error = RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"tag": "x"})
    assert error.status == 404
    assert error.as_dict() == {
        "errors": [
            {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {"tag": "x"}}
        ]
    }
