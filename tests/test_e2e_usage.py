"""Pulls through the live platform reach the group's usage days after a batched flush:
a cold pull counts upstream, a warm one the cache."""

from __future__ import annotations

import time
import typing as t
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from flask_dependency_proxy.cache.usage import FLUSH_SECONDS
from tests.support import images, seed
from tests.support.platform import Platform
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: The subject is the counting, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]


def test_cold_and_warm_pulls_are_counted(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    unique_name: str,
    tmp_path: Path,
) -> None:
    live = platform_factory(upstream.url, gunicorn_args=["--workers", "1"])
    image = images.build_image(unique_name, layer_sizes=(3000,))
    pushed = images.push(image, upstream, f"usage/{unique_name}", "1", workdir=tmp_path)
    headers = live.bearer(seed.ALICE.username, seed.ALICE.password, seed.ACME, pushed.repository)
    base = f"{live.url}/v2/{live.repository(seed.ACME, pushed.repository)}"
    layer = image.layers[0]
    for _ in range(2):  # cold, then warm
        assert requests.get(f"{base}/manifests/1", headers=headers, timeout=30).ok
        assert requests.get(f"{base}/blobs/{layer.digest}", headers=headers, timeout=30).ok
    assert requests.head(f"{base}/manifests/1", headers=headers, timeout=30).ok  # not counted

    time.sleep(FLUSH_SECONDS + 0.5)
    requests.head(f"{base}/manifests/1", headers=headers, timeout=30)  # flushes the batch

    engine = sa.create_engine(live.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT pulls_cached, pulls_upstream, bytes_cached, bytes_upstream"
                    " FROM dependency_proxy_usage_days"
                )
            ).all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in rows] == [(1, 1, len(layer.data), len(layer.data))]
