"""Switching a group's proxy on or off reaches every gunicorn worker within seconds, not
after the recheck interval that bounds how long a revoked membership keeps working."""

from __future__ import annotations

import time
import typing as t
from pathlib import Path

import pytest
import requests

from flask_dependency_proxy.auth.access import SWITCH_RECHECK_SECONDS
from tests.support import images, seed
from tests.support.platform import Platform
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e
#: The subject is the switch reaching every worker, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]


def _proxy_off(platform: Platform) -> None:
    with platform.batch():
        platform.init_db()
        platform.create_user(seed.ALICE.username, seed.ALICE.password)
        platform.create_group(seed.ACME, private=True)
        platform.add_member(seed.ACME, seed.ALICE.username, "developer")


def test_switching_the_proxy_reaches_every_worker(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    unique_name: str,
    tmp_path: Path,
) -> None:
    live = platform_factory(upstream.url, setup=_proxy_off)  # two workers
    image = images.build_image(unique_name, layer_sizes=(1000,))
    pushed = images.push(image, upstream, f"toggle/{unique_name}", "1", workdir=tmp_path)
    headers = live.bearer(seed.ALICE.username, seed.ALICE.password, seed.ACME, pushed.repository)
    url = f"{live.url}/v2/{live.repository(seed.ACME, pushed.repository)}/manifests/1"

    def statuses() -> list[int]:
        # Separate connections, so both workers answer some of them.
        return [requests.get(url, headers=headers, timeout=30).status_code for _ in range(12)]

    assert set(statuses()) == {404}  # every worker has seen the proxy off
    live.enable_proxy(seed.ACME)  # another process writes the setting
    time.sleep(SWITCH_RECHECK_SECONDS + 0.5)
    assert set(statuses()) == {200}  # and every worker has granted the pull

    live.flask("dependency-proxy", "disable", seed.ACME)
    time.sleep(SWITCH_RECHECK_SECONDS + 0.5)
    assert set(statuses()) == {404}
