"""Assertions shared by the end-to-end tests."""

from __future__ import annotations

import subprocess
import typing as t
from pathlib import Path

import requests

from .clients import describe
from .images import Pushed
from .registry import Registry

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert a client run succeeded; the message shows its whole output."""
    assert result.returncode == 0, describe(result)
    return result


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """Assert a client run failed; return its lowercased output for further checks."""
    assert result.returncode != 0, describe(result)
    return (result.stdout + result.stderr).lower()


def api_version(response: requests.Response) -> requests.Response:
    """Every registry response says which API it speaks."""
    assert response.headers.get(API_VERSION[0]) == API_VERSION[1], (
        response.status_code,
        dict(response.headers),
    )
    return response


def registry_error(
    response: requests.Response,
    status: int | t.Collection[int],
    codes: str | t.Collection[str],
) -> dict[str, t.Any]:
    """Assert a registry-style JSON error (never HTML, never 500); return the first error."""
    allowed_status = {status} if isinstance(status, int) else set(status)
    allowed_codes = {codes} if isinstance(codes, str) else set(codes)
    detail = (
        f"{response.request.method} {response.url} -> {response.status_code}: {response.text[:500]}"
    )
    assert response.status_code in allowed_status, detail
    assert response.headers.get("Content-Type", "").startswith("application/json"), detail
    body = response.json()
    assert isinstance(body.get("errors"), list) and body["errors"], detail
    error = body["errors"][0]
    assert error.get("code") in allowed_codes, detail
    assert "message" in error, detail
    api_version(response)
    return t.cast(dict[str, t.Any], error)


def same_as_upstream(target: Path, pushed: Pushed, upstream: Registry) -> None:
    """A ``dir:`` copy holds exactly the upstream's manifest bytes and blob files."""
    assert (target / "manifest.json").read_bytes() == pushed.manifest
    files = {p.name for p in target.iterdir()} - {"manifest.json", "version"}
    assert files == {d.partition(":")[2] for d in pushed.blob_digests}
    for digest in pushed.blob_digests:
        assert (target / digest.partition(":")[2]).read_bytes() == upstream.read_blob(digest), (
            digest
        )
