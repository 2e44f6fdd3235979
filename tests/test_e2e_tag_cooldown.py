"""The tag cooldown through the live platform, with skopeo and docker: a tag moved
upstream keeps pulling the previous image (marked with the pending digest and its
release time) and the new one once the short window has passed; a brand-new tag under
the ``refuse`` policy gives both clients a readable error until an owner releases it
early through the REST API; the API lists the tags in cooldown and the pull record keeps
``cooldown-previous`` and ``refused``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import checks, images
from tests.support.clients import Skopeo
from tests.support.dockerd import Dockerd
from tests.support.platform import Platform
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry

# The cooldown's rules run on SQLite in tests/unit/test_tag_cooldown.py; here the fleet's database.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

pytestmark = pytest.mark.e2e

FAST = {
    "DEPENDENCY_PROXY_PULL_RECORD_FLUSH_SECONDS": "0.2",
    "DEPENDENCY_PROXY_BLOCK_REFRESH_SECONDS": "0.2",
}
#: The short window of the test, in seconds.
WINDOW = 8
_HEADER = re.compile(r'pending="(?P<digest>sha256:[0-9a-f]{64})"; release-at="(?P<at>[^"]+)"')


def _setup(platform: Platform) -> None:
    with platform.batch():
        platform.init_db()
        platform.create_user("dev", "dev-password-0001")
        platform.create_user("boss", "boss-password-0001")
        platform.create_group("acme", private=True)
        platform.add_member("acme", "boss", "owner")
        platform.add_member("acme", "dev", "developer")
        platform.enable_proxy("acme")


def _digest(skopeo: Skopeo, reference: str) -> str:
    return t.cast(str, json.loads(checks.ok(skopeo.inspect(reference)).stdout)["Digest"])


def _docker_image_id(engine: Dockerd, reference: str) -> str:
    checks.ok(engine.docker("pull", reference))
    inspected = json.loads(checks.ok(engine.docker("image", "inspect", reference)).stdout)
    checks.ok(engine.docker("rmi", reference))
    return t.cast(str, inspected[0]["Id"])


def test_a_moved_tag_keeps_its_previous_image_and_a_new_tag_waits_for_its_release(
    platform_factory: t.Callable[..., Platform],
    upstream_factory: t.Callable[..., Registry],
    live_process: ProcessFactory,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    upstream = upstream_factory()
    repository = f"library/{unique_name}"

    def push(seed: str, tag: str) -> images.Pushed:
        image = images.build_image(f"{unique_name}-{seed}", layer_sizes=(1500,))
        return images.push(image, upstream, repository, tag, workdir=tmp_path / seed)

    first = push("first", "latest")
    live = platform_factory(upstream.url, setup=_setup, extra_env=FAST, workers=1)
    engine = Dockerd(live_process, tmp_path / "dockerd").start()
    checks.ok(engine.login(live.host, "dev", "dev-password-0001"))
    checks.ok(skopeo.login(live.host, "dev", "dev-password-0001"))
    latest = live.image("acme", unique_name, "latest")
    assert _digest(skopeo, latest) == first.digest  # cached before the cooldown

    token = live.flask("token", "create", "boss", "--scopes", "api").stdout.split()[-1]
    api = f"{live.url}/api/v4/groups/acme/dependency_proxy"
    headers = {"PRIVATE-TOKEN": token}
    saved = requests.put(
        f"{api}/cooldown",
        json={"cooldown_hours": 1, "new_tags": "refuse"},
        headers=headers,
        timeout=30,
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["effective"]["cooldown_hours"] == 1
    time.sleep(0.3)  # the other workers' refresh

    # Moved upstream: skopeo and docker keep getting the previous image.
    second = push("second", "latest")
    assert _digest(skopeo, latest) == first.digest
    assert _docker_image_id(engine, latest) == first.config_digest
    pull_headers = live.bearer("dev", "dev-password-0001", "acme", unique_name)
    pull_headers["Accept"] = images.MANIFEST_ACCEPT
    answer = requests.get(
        f"{live.url}/v2/{live.repository('acme', unique_name)}/manifests/latest",
        headers=pull_headers,
        timeout=30,
    )
    assert answer.headers["Docker-Content-Digest"] == first.digest
    marked = _HEADER.fullmatch(answer.headers["X-Dependency-Proxy-Cooldown"])
    assert marked and marked["digest"] == second.digest, answer.headers

    # A brand-new tag is refused with a readable reason until an owner releases it.
    fresh = push("fresh", "fresh")
    fresh_ref = live.image("acme", unique_name, "fresh")
    refused = skopeo.inspect(fresh_ref, raw=True)
    assert refused.returncode != 0 and "tag cooldown" in refused.stderr, refused.stderr
    docker_refused = engine.docker("pull", fresh_ref)
    said = docker_refused.stdout + docker_refused.stderr
    assert docker_refused.returncode != 0 and "tag cooldown" in said, said
    assert "served from" in said
    listed = requests.get(f"{api}/cooldowns", headers=headers, timeout=30).json()
    by_tag = {entry["tag"]: entry for entry in listed}
    assert by_tag["latest"]["pending_digest"] == second.digest
    assert by_tag["latest"]["previous_digest"] == first.digest
    assert by_tag["fresh"]["previous_digest"] is None
    released = requests.post(
        f"{api}/cooldowns/{by_tag['fresh']['id']}/release", headers=headers, timeout=30
    )
    assert released.status_code == 200 and released.json()["released_by"] == "boss"
    assert _digest(skopeo, fresh_ref) == fresh.digest
    assert _docker_image_id(engine, fresh_ref) == fresh.config_digest

    # A short window: a third image waits for it, then skopeo and docker get it.
    saved = requests.put(
        f"{api}/cooldown", json={"cooldown_hours": WINDOW / 3600}, headers=headers, timeout=30
    )
    assert saved.status_code == 200, saved.text
    time.sleep(0.3)
    third = push("third", "latest")
    answer = requests.get(
        f"{live.url}/v2/{live.repository('acme', unique_name)}/manifests/latest",
        headers=pull_headers,
        timeout=30,
    )
    assert answer.headers["Docker-Content-Digest"] == first.digest
    marked = _HEADER.fullmatch(answer.headers["X-Dependency-Proxy-Cooldown"])
    assert marked and marked["digest"] == third.digest
    release_at = dt.datetime.fromisoformat(marked["at"].replace("Z", "+00:00"))
    assert _digest(skopeo, latest) == first.digest
    time.sleep(max(0.0, (release_at - dt.datetime.now(dt.UTC)).total_seconds()) + 1.2)
    assert _digest(skopeo, latest) == third.digest
    assert _docker_image_id(engine, latest) == third.config_digest
    assert requests.get(f"{api}/cooldowns", headers=headers, timeout=30).json() == []

    time.sleep(0.3)
    skopeo.inspect(latest, raw=True)  # its request writes the pull record's batch
    pulls = requests.get(f"{api}/pulls", headers=headers, params={"per_page": 100}, timeout=30)
    outcomes = {(pull["reference"], pull["outcome"]) for pull in pulls.json()}
    assert ("latest", "cooldown-previous") in outcomes and ("fresh", "refused") in outcomes
    events = requests.get(f"{api}/events", headers=headers, timeout=30).json()
    assert any(e["kind"] == "cooldown_released" and "boss" in e["message"] for e in events)
