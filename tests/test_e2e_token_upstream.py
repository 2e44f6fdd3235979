"""An upstream with token auth like Docker Hub's: the platform negotiates tokens from the
upstream's challenge and keeps them until they expire."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest

from tests.support import checks, images, seed
from tests.support.clients import Skopeo
from tests.support.platform import Platform
from tests.support.tokenserver import TokenUpstream

pytestmark = pytest.mark.e2e

#: The subject is the upstream's token protocol, not the database: PostgreSQL, the production
#: setup, only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

GROUP = seed.ACME
USER = seed.ALICE


def test_pulls_through_token_upstream_with_one_token_per_repository(
    token_upstream: TokenUpstream,
    platform_factory: t.Callable[..., Platform],
    tmp_path: Path,
) -> None:
    registry, token_server, creds = token_upstream
    first = images.push(
        images.build_image("tok-first"),
        registry,
        "library/alpine",
        "3",
        workdir=tmp_path,
        creds=creds,
    )
    second = images.push(
        images.build_index("tok-second", layer_sizes=(1000,)),
        registry,
        "team/tool",
        "1",
        workdir=tmp_path,
        creds=creds,
    )
    platform = platform_factory(registry.url)
    since = token_server.mark()
    upstream_since = registry.mark()

    skopeo = Skopeo(tmp_path / "skopeo")
    checks.ok(skopeo.login(platform.host, USER.username, USER.password))
    for _ in range(2):
        result, target = skopeo.copy_to_dir(platform.image(GROUP, "alpine", "3"))
        checks.ok(result)
        checks.same_as_upstream(target, first, registry)
    result, layout = skopeo.copy_to_oci(platform.image(GROUP, "team/tool", "1"))
    checks.ok(result)
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == second.digest

    # Every upstream request after the first challenge carried a valid token.
    pulls = [r for r in registry.access_log(upstream_since) if r.repository is not None]
    assert {r.repository for r in pulls} == {"library/alpine", "team/tool"}, pulls
    assert all(r.status in (200, 401) for r in pulls), pulls
    assert any(r.status == 200 and r.kind == "blobs" for r in pulls)

    asked = token_server.requests[since:]
    assert asked, "the platform never asked the token server"
    assert {r.service for r in asked} == {"registry.docker.io"}
    # Tokens are cached until they expire (300 s here, longer than this test), and the
    # gunicorn workers share them: one token per repository, whichever worker served.
    assert platform.workers > 1
    for repository in ("library/alpine", "team/tool"):
        assert token_server.count(repository, since=since) == 1, asked
