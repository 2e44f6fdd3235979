"""``flask dependency-proxy warm`` against the live platform: an operator fills a
group's cache ahead of a CI rush, with the platform serving pulls at the same time.

The platform's upstream is the session registry behind a fault proxy, so a test can
slow a blob down and have a pull and the warm-up ask for it at the same moment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import typing as t
from pathlib import Path

import pytest

from tests.support import checks, images, seed
from tests.support.clients import Skopeo
from tests.support.faultproxy import FaultProxy, Throttle
from tests.support.platform import APP_IMPORT, REPO_ROOT, Platform, PlatformFactory
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: The subject is the warm-up command, not the database: PostgreSQL, the production
#: setup, only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

GROUP = seed.ACME
USER = seed.ALICE


class World(t.NamedTuple):
    platform: Platform
    upstream: Registry
    faulty: FaultProxy


@pytest.fixture(scope="module")
def world(
    module_platform_factory: PlatformFactory,
    upstream: Registry,
) -> t.Iterator[World]:
    faulty = FaultProxy(upstream.url).start()
    try:
        yield World(module_platform_factory(faulty.url, name="warm"), upstream, faulty)
    finally:
        faulty.stop()


def _warm(world: World, *args: str, terminal: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**world.platform.env, "COLUMNS": "160"}
    if terminal:
        env["TTY_COMPATIBLE"] = "1"  # rich draws its bars as on a terminal
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", APP_IMPORT, "dependency-proxy", "warm", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


def _blob_gets(world: World, repository: str, since: int) -> list[str]:
    return [
        record.reference
        for record in world.upstream.access_log(since)
        if record.method == "GET" and record.kind == "blobs" and record.repository == repository
    ]


def test_warm_fetches_every_platform_and_later_pulls_fetch_no_blob(
    world: World, tmp_path: Path, unique_name: str
) -> None:
    multi = images.push(
        images.build_index(f"{unique_name}-multi"),
        world.upstream,
        f"warm/{unique_name}-multi",
        "1",
        workdir=tmp_path,
    )
    single = images.push(
        images.build_image(f"{unique_name}-single", layer_sizes=(40_000, 50_000)),
        world.upstream,
        f"warm/{unique_name}-single",
        "2.0",
        workdir=tmp_path,
    )
    mark = world.upstream.mark()

    result = _warm(world, GROUP, f"{multi.repository}:1", f"{single.repository}:2.0", terminal=True)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{multi.repository}:1 (linux/amd64, linux/arm64/v8): " in result.stdout
    assert f"{single.repository}:2.0: 3 blobs fetched" in result.stdout
    assert "Warmed 2 of 2 images into acme" in result.stdout
    # The bars: one per image and one overall, in bytes.
    assert "overall" in result.stdout and "kB" in result.stdout, result.stdout
    assert sorted(_blob_gets(world, multi.repository, mark)) == sorted(set(multi.blob_digests))
    assert sorted(_blob_gets(world, single.repository, mark)) == sorted(single.blob_digests)

    skopeo = Skopeo(tmp_path / "skopeo")
    checks.ok(skopeo.login(world.platform.host, USER.username, USER.password))
    pulled = world.upstream.mark()
    target = tmp_path / "pulled"
    checks.ok(
        skopeo.copy(world.platform.image(GROUP, multi.repository, "1"), f"oci:{target}:1", all=True)
    )
    checks.ok(skopeo.copy_to_dir(world.platform.image(GROUP, single.repository, "2.0"))[0])
    assert _blob_gets(world, multi.repository, pulled) == []
    assert _blob_gets(world, single.repository, pulled) == []

    again = _warm(world, GROUP, f"{single.repository}:2.0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 blobs fetched (0 bytes), 3 already cached" in again.stdout


def test_one_platform_from_a_file_and_a_summary_of_what_failed(
    world: World, tmp_path: Path, unique_name: str
) -> None:
    multi = images.push(
        images.build_index(f"{unique_name}-arm"),
        world.upstream,
        f"warm/{unique_name}-arm",
        "1",
        workdir=tmp_path,
    )
    listing = tmp_path / "images.txt"
    listing.write_text(
        f"# what the nightly jobs use\n{multi.repository}:1\n\nwarm/{unique_name}-missing:1\n"
    )
    mark = world.upstream.mark()

    result = _warm(world, GROUP, "--from-file", str(listing), "--platform", "linux/arm64")

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{multi.repository}:1 (linux/arm64/v8): " in result.stdout
    assert "Warmed 1 of 2 images" in result.stdout
    assert f"Not warmed: warm/{unique_name}-missing:1 (MANIFEST_UNKNOWN" in result.stderr
    arm64 = multi.child("arm64")
    assert sorted(_blob_gets(world, multi.repository, mark)) == sorted(arm64.blob_digests)


@pytest.mark.parametrize(
    ("arguments", "status", "message"),
    [
        (("alpine:bad tag",), 2, "is not a valid tag"),
        (("alpine@sha256:123",), 2, "is not a sha256 or sha512 digest"),
        (("alpine", "--platform", "linux"), 2, "is not a platform"),
        ((), 2, "Name at least one image"),
        (("Bad..Name:1",), 1, "invalid image name"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_fetched(
    world: World, arguments: tuple[str, ...], status: int, message: str
) -> None:
    mark = len(world.faulty.requests)
    result = _warm(world, GROUP, *arguments)
    assert result.returncode == status, result.stdout + result.stderr
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert world.faulty.requests[mark:] == []


def test_a_group_with_the_proxy_off_or_unknown_is_refused(world: World) -> None:
    world.platform.create_group("warm-off")
    mark = len(world.faulty.requests)
    off = _warm(world, "warm-off", "alpine:1")
    assert off.returncode == 1
    assert "The dependency proxy is off for warm-off" in off.stderr
    unknown = _warm(world, "no-such-group", "alpine:1")
    assert unknown.returncode == 1
    assert "No group with full path 'no-such-group'" in unknown.stderr
    assert world.faulty.requests[mark:] == []


def test_warm_and_a_pull_of_the_same_blob_share_one_upstream_get(
    world: World, tmp_path: Path, unique_name: str
) -> None:
    """The layer crawls upstream (about 2 s), so the pull and the warm-up ask for it
    while the other's fetch is in progress; upstream sees one GET of it."""
    pushed = images.push(
        images.build_image(f"{unique_name}-shared", layer_sizes=(600_000,)),
        world.upstream,
        f"warm/{unique_name}-shared",
        "1",
        workdir=tmp_path,
    )
    layer = pushed.layer_digests[0]
    rule = world.faulty.add(Throttle(300_000), path=f"/blobs/{layer}")
    skopeo = Skopeo(tmp_path / "skopeo")
    checks.ok(skopeo.login(world.platform.host, USER.username, USER.password))
    mark = world.upstream.mark()
    pulled: list[subprocess.CompletedProcess[str]] = []
    puller = threading.Thread(
        target=lambda: pulled.append(
            skopeo.copy_to_dir(world.platform.image(GROUP, pushed.repository, "1"))[0]
        )
    )
    try:
        puller.start()
        result = _warm(world, GROUP, f"{pushed.repository}:1")
        puller.join(120)
    finally:
        rule.times = 0
    assert result.returncode == 0, result.stdout + result.stderr
    assert pulled and pulled[0].returncode == 0, pulled
    assert _blob_gets(world, pushed.repository, mark).count(layer) == 1
    assert world.platform.stored_blobs_for(layer) == [world.upstream.read_blob(layer)]


def test_stats_json_names_the_groups_figures(
    world: World, tmp_path: Path, unique_name: str
) -> None:
    pushed = images.push(
        images.build_image(f"{unique_name}-stats", layer_sizes=(10_000,)),
        world.upstream,
        f"warm/{unique_name}-stats",
        "1",
        workdir=tmp_path,
    )
    assert _warm(world, GROUP, f"{pushed.repository}:1").returncode == 0

    result = world.platform.flask("dependency-proxy", "stats", "--json")

    document = json.loads(result.stdout)
    (acme,) = [group for group in document["groups"] if group["full_path"] == GROUP]
    assert acme["images"] >= 1 and acme["blobs"]["count"] >= len(pushed.blob_digests)
    assert acme["size"] == acme["manifests"]["size"] + acme["blobs"]["size"]
    assert document["store"]["blobs"] >= acme["blobs"]["count"]
    one = json.loads(world.platform.flask("dependency-proxy", "stats", GROUP, "--json").stdout)
    assert one["groups"] == [acme] and "store" not in one
