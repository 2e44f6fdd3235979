"""Predictive refresh against the live platform and its real upstream registry: a tag
moved upstream is fetched ahead by one refresher run, so the next skopeo pull makes no
upstream blob GET; an image a project's CI file names is warmed by the refresher before
anyone pulled it; a CI job asks for a warm-up over the REST API with its job token.

The refresher's run-once entry point is ``flask dependency-proxy refresh``, run in the
platform's environment (the web processes run no scheduler here). On SQLite and
PostgreSQL: on SQLite the command's process and the web workers share the database file.
"""

from __future__ import annotations

import json
import time
import typing as t
from pathlib import Path

import pytest

from tests.support import checks, images, seed
from tests.support.clients import Skopeo
from tests.support.platform import Platform, PlatformFactory
from tests.support.registry import Registry

# The refresher's lease across a fleet is PostgreSQL's; the unit tests run the rules on SQLite.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

pytestmark = pytest.mark.e2e

GROUP = seed.ACME
USER = seed.ALICE
#: More than a worker's bookkeeping thread takes to write what is due (it polls at least
#: every second).
BOOKKEEPING_SECONDS = 2.5


def _setup(platform: Platform) -> None:
    seed.seed_full(platform)
    platform.setup_command("project", "create", f"{GROUP}/app")


@pytest.fixture(scope="module")
def live(module_platform_factory: PlatformFactory, upstream: Registry) -> Platform:
    return module_platform_factory(
        upstream.url,
        name="refresh",
        setup=_setup,
        # Every request writes the buffered pull counts and pull record, so a run (and
        # the refresh status) sees the last pull.
        extra_env={
            "DEPENDENCY_PROXY_USAGE_FLUSH_SECONDS": "0",
            "DEPENDENCY_PROXY_PULL_RECORD_FLUSH_SECONDS": "0",
        },
    )


def _blob_gets(upstream: Registry, repository: str, since: int) -> list[str]:
    return [
        record.reference
        for record in upstream.access_log(since)
        if record.method == "GET" and record.kind == "blobs" and record.repository == repository
    ]


def _pull(live: Platform, skopeo: Skopeo, repository: str, tag: str) -> None:
    checks.ok(skopeo.copy_to_dir(live.image(GROUP, repository, tag))[0])
    # The pull's last counts are written by the next request of the worker that served
    # the manifest, or by that worker's bookkeeping thread within a second (it is due at
    # once here): the next request may reach the other worker.
    live.token(USER.username, USER.password)
    time.sleep(BOOKKEEPING_SECONDS)


def test_a_tag_moved_upstream_is_fetched_by_one_run_and_the_next_pull_gets_no_blob(
    live: Platform, upstream: Registry, tmp_path: Path, unique_name: str
) -> None:
    repository = f"refresh/{unique_name}"
    images.push(
        images.build_image(f"{unique_name}-1", layer_sizes=(30_000,)),
        upstream, repository, "stable", workdir=tmp_path,
    )  # fmt: skip
    skopeo = Skopeo(tmp_path / "skopeo")
    checks.ok(skopeo.login(live.host, USER.username, USER.password))
    _pull(live, skopeo, repository, "stable")
    moved = images.push(
        images.build_image(f"{unique_name}-2", layer_sizes=(40_000, 20_000)),
        upstream, repository, "stable", workdir=tmp_path,
    )  # fmt: skip
    fetched = upstream.mark()

    result = live.flask("dependency-proxy", "refresh", GROUP)

    assert "1 moved" in result.stdout, result.stdout + result.stderr
    assert sorted(_blob_gets(upstream, repository, fetched)) == sorted(moved.blob_digests)
    pulled = upstream.mark()
    target = tmp_path / "after"
    checks.ok(skopeo.copy(live.image(GROUP, repository, "stable"), f"dir:{target}"))
    assert _blob_gets(upstream, repository, pulled) == []
    assert json.loads((target / "manifest.json").read_bytes()) == json.loads(moved.manifest)

    # The API shows when the tag was refreshed, the digest it fetched, and that the pull
    # after it was warm because of it.
    token = live.flask("token", "create", seed.ROOT.username, "--scopes", "api").stdout
    row = _refresh_row(live, token.strip().splitlines()[-1], repository, moved.digest)
    assert row["refreshed_digest"] == moved.digest and row["refreshed_at"]
    assert row["last_pull"]["digest"] == moved.digest, row
    assert row["last_pull"]["outcome"] in ("hit", "revalidated"), row
    assert row["warm_because_of_refresh"] is True, row


def test_what_a_ci_file_names_is_warmed_before_anyone_pulls_it(
    live: Platform, upstream: Registry, tmp_path: Path, unique_name: str
) -> None:
    repository = f"refresh/{unique_name}-ci"
    pushed = images.push(
        images.build_image(unique_name, layer_sizes=(25_000,)),
        upstream, repository, "1", workdir=tmp_path,
    )  # fmt: skip
    ci_file = tmp_path / "ci.yml"
    ci_file.write_text(
        "test:\n"
        f"  image: ${{CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX}}/{repository}:1\n"
        "  script: [make test]\n"
    )
    live.flask("project", "set-ci-file", f"{GROUP}/app", str(ci_file))
    fetched = upstream.mark()

    live.flask("dependency-proxy", "refresh", GROUP)

    assert sorted(_blob_gets(upstream, repository, fetched)) == sorted(pushed.blob_digests)
    skopeo = Skopeo(tmp_path / "skopeo")
    checks.ok(skopeo.login(live.host, USER.username, USER.password))
    pulled = upstream.mark()
    checks.ok(skopeo.copy_to_dir(live.image(GROUP, repository, "1"))[0])
    assert _blob_gets(upstream, repository, pulled) == []


def test_a_ci_job_asks_for_a_warm_up_with_its_job_token(
    live: Platform, upstream: Registry, tmp_path: Path, unique_name: str
) -> None:
    repository = f"refresh/{unique_name}-job"
    pushed = images.push(
        images.build_image(unique_name, layer_sizes=(20_000,)),
        upstream, repository, "2", workdir=tmp_path,
    )  # fmt: skip
    answer = tmp_path / "answer.json"
    body = json.dumps([f"{repository}:2", "Not A Reference!"])
    script = (
        f"curl -sS -o {answer} -w '%{{http_code}}' -X POST"
        " -H \"JOB-TOKEN: $CI_JOB_TOKEN\" -H 'Content-Type: application/json'"
        f" --data '{body}' {live.url}/api/v4/groups/{GROUP}/dependency_proxy/warm"
    )
    fetched = upstream.mark()

    job = live.flask("ci", "run", f"{GROUP}/app", "--user", USER.username, "--", "sh", "-c", script)

    assert job.stdout.strip().endswith("202"), job.stdout + job.stderr
    result = json.loads(answer.read_text())
    assert [item["image"] for item in result["queued"]] == [repository]
    assert [item["index"] for item in result["errors"]] == [1]
    deadline = time.monotonic() + 30
    while sorted(set(_blob_gets(upstream, repository, fetched))) != sorted(pushed.blob_digests):
        assert time.monotonic() < deadline, "the queued warm-up fetched nothing"
        time.sleep(0.2)
    # A stranger's token is refused.
    refused = _post(live, {"JOB-TOKEN": "not-a-job-token"}, [f"{repository}:2"])
    assert refused.status_code == 401


def _refresh_row(live: Platform, token: str, repository: str, digest: str) -> t.Any:
    """The tag's row of ``GET refresh`` once its last pull is written: the pull record
    is written by the next registry request of the worker that served the pull, so ask
    the workers (a new connection each) until it is."""
    import requests

    headers = live.bearer(USER.username, USER.password, GROUP, repository)
    deadline = time.monotonic() + 15
    while True:
        answer = _api(live, token, "GET", "refresh")
        row = next(r for r in answer["tags_refreshed"] if r["image"] == repository)
        if row["last_pull"] is not None or time.monotonic() > deadline:
            return row
        requests.head(
            live.url + f"/v2/{live.repository(GROUP, repository)}/manifests/{digest}",
            headers=headers,
            timeout=30,
        )
        time.sleep(0.1)


def _api(live: Platform, token: str, method: str, route: str) -> t.Any:
    import requests

    response = requests.request(
        method,
        f"{live.url}/api/v4/groups/{GROUP}/dependency_proxy/{route}",
        headers={"PRIVATE-TOKEN": token},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _post(live: Platform, headers: dict[str, str], body: t.Any) -> t.Any:
    import requests

    return requests.post(
        f"{live.url}/api/v4/groups/{GROUP}/dependency_proxy/warm",
        headers=headers,
        json=body,
        timeout=30,
    )
