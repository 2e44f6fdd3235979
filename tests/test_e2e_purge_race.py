"""Purge and cleanup racing pulls on the live platform: no pull fails.

Operators clear a group's cache and cron runs cleanup while CI keeps pulling. Every
pull in that window must still get the right bytes; the files and rows that cleanup
removes underneath a pull are fetched again, never answered with an error.
"""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import images, seed
from tests.support.platform import REPO_ROOT, Platform
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

USER = seed.ALICE
GROUP = seed.ACME
RACE_SECONDS = 30.0
#: Purges of the groups named and cleanups, back to back in one process for as long as
#: the first argument says (what an operator's loop or cron job with a grace of 0 does).
_PURGE_LOOP = """
import re, sys, time
from examples.platform import create_app
seconds, groups = float(sys.argv[1]), sys.argv[2:]
runner = create_app().test_cli_runner()
deadline, cycles, set_aside = time.monotonic() + seconds, 0, 0
def run(*args):
    result = runner.invoke(args=["dependency-proxy", *args])
    if result.exit_code != 0:
        sys.exit(f"{args}: {result.output} {result.exception!r}")
    return result.output
while time.monotonic() < deadline:
    for group in groups:
        run("purge", group, "--force")
    set_aside += int(re.search(r"set aside (\\d+)", run("cleanup"))[1])
    cycles += 1
print(cycles, set_aside)
"""


class Target(t.NamedTuple):
    base: str
    headers: dict[str, str]
    blobs: dict[str, bytes]


def _pull(target: Target, failures: list[str]) -> None:
    """One pull by tag, like a client: the manifest, then every blob, checked."""
    response = requests.get(f"{target.base}/manifests/1", headers=target.headers, timeout=30)
    if response.status_code != 200:
        failures.append(f"manifest {response.status_code} {response.text[:200]}")
        return
    for digest, data in target.blobs.items():
        response = requests.get(f"{target.base}/blobs/{digest}", headers=target.headers, timeout=30)
        if response.status_code != 200:
            failures.append(f"blob {digest[:19]} {response.status_code} {response.text[:200]}")
        elif response.content != data:
            failures.append(f"blob {digest[:19]}: wrong bytes ({len(response.content)})")


@pytest.mark.timeout(240)
def test_purge_and_cleanup_loop_racing_pulls_fails_no_pull(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    unique_name: str,
    tmp_path: Path,
) -> None:
    platform = platform_factory(
        upstream.url,
        extra_env={
            "DEPENDENCY_PROXY_PURGE_COOLDOWN_SECONDS": "0",
            # Short enough that files are set aside and deleted during the race.
            "DEPENDENCY_PROXY_CLEANUP_FILE_GRACE_SECONDS": "1",
        },
    )
    targets = []
    for number in range(4):
        image = images.build_image(f"{unique_name}-{number}", layer_sizes=(300_000, 900_000))
        pushed = images.push(image, upstream, f"race/{unique_name}-{number}", "1", workdir=tmp_path)
        targets.append(
            Target(
                f"{platform.url}/v2/{platform.repository(GROUP, pushed.repository)}",
                platform.bearer(USER.username, USER.password, GROUP, pushed.repository),
                {blob.digest: blob.data for blob in image.blobs},
            )
        )
    for blob_data in (target.blobs for target in targets):
        for digest, data in blob_data.items():
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest

    failures: list[str] = []
    pulls = [0]
    stop = threading.Event()
    # One image rests during each purge and cleanup, so cleanup surely takes its files
    # away; pulls of it start again right after, while the other images race throughout.
    resting = [0]

    def puller(index: int) -> None:
        chooser = random.Random(index)
        while not stop.is_set():
            _pull(chooser.choice([x for n, x in enumerate(targets) if n != resting[0]]), failures)
            pulls[0] += 1
            # Pauses leave some content unpulled for a while, so cleanup gets to it
            # while other pulls of the same content are about to start.
            stop.wait(chooser.uniform(0, 1.5))

    threads = [threading.Thread(target=puller, args=(n,), daemon=True) for n in range(6)]
    for thread in threads:
        thread.start()
    cycles = 0
    removed_files = 0
    deadline = time.monotonic() + RACE_SECONDS
    try:
        while time.monotonic() < deadline:
            resting[0] = cycles % len(targets)
            platform.flask("dependency-proxy", "purge", GROUP, "--force")
            output = platform.flask("dependency-proxy", "cleanup").stdout
            removed_files += int(re.search(r"set aside (\d+)", output)[1])  # type: ignore[index]
            cycles += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    print(f"{cycles} purge+cleanup cycles, {pulls[0]} pulls, {removed_files} files set aside")
    assert cycles >= 2 and pulls[0] >= 20, (cycles, pulls[0])
    # The race was real: cleanup took files away that pulls then had to bring back.
    assert removed_files > 0
    assert not failures, f"{len(failures)} failures in {pulls[0]} pulls: {failures[:10]}"


@pytest.mark.timeout(180)
def test_purging_two_groups_without_a_grace_period_never_answers_500(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Without the grace period, cleanup takes files away the moment no row claims them,
    even a file a fetch committed an instant ago, and purges drop rows that pulls are
    writing. A pull may then have to be retried (503); it never gets a 500, nor wrong
    bytes."""
    platform = platform_factory(
        upstream.url,
        setup=seed.seed_full,
        extra_env={
            "DEPENDENCY_PROXY_PURGE_COOLDOWN_SECONDS": "0",
            "DEPENDENCY_PROXY_CLEANUP_FILE_GRACE_SECONDS": "0",
        },
    )
    targets = []
    for number in range(2):
        image = images.build_image(f"{unique_name}-{number}", layer_sizes=(50_000, 400_000))
        pushed = images.push(image, upstream, f"race/{unique_name}-{number}", "1", workdir=tmp_path)
        # The same content in both groups: files are shared, rows are not.
        for group in (GROUP, seed.ACME_TOOLS):
            targets.append(
                Target(
                    f"{platform.url}/v2/{platform.repository(group, pushed.repository)}",
                    platform.bearer(USER.username, USER.password, group, pushed.repository),
                    {blob.digest: blob.data for blob in image.blobs},
                )
            )
    failures: list[str] = []
    pulls = [0]
    stop = threading.Event()

    def puller(index: int) -> None:
        chooser = random.Random(index)
        while not stop.is_set():
            _pull(chooser.choice(targets), failures)
            pulls[0] += 1

    threads = [threading.Thread(target=puller, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        loop = subprocess.run(
            [sys.executable, "-c", _PURGE_LOOP, "20", GROUP, seed.ACME_TOOLS],
            env=platform.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    cycles, set_aside = map(int, loop.stdout.split()[-2:])
    print(f"{cycles} cycles, {pulls[0]} pulls, {set_aside} files set aside: {failures}")
    assert cycles >= 5 and pulls[0] >= 20 and set_aside > 0, (cycles, pulls[0], set_aside)
    # A race with a purge may answer a retryable 503, never anything else.
    errors = [f for f in failures if " 503 " not in f]
    assert not errors, f"{len(failures)} failures in {pulls[0]} pulls: {errors[:10]}"
