"""Blocked images and the pull record through the live platform, with real clients:
a CI job of the example platform (``flask ci run``) pulls with skopeo; the pulls API
and ``flask dependency-proxy pulls`` find the pull by digest with the job's project;
a group owner's block (REST API) refuses the image to skopeo with its reason in that
group only; an instance administrator's block (CLI) refuses it by tag, by digest, in a
second group that shares the blob store, and from the cache while upstream is down.
"""

from __future__ import annotations

import json
import time
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import images
from tests.support.clients import Skopeo
from tests.support.platform import Platform
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_SCRIPT = REPO_ROOT / "examples" / "ci" / "job.sh"
#: Short intervals, so a write of the pull record and a block made elsewhere are quick.
FAST = {
    "DEPENDENCY_PROXY_PULL_RECORD_FLUSH_SECONDS": "0.3",
    "DEPENDENCY_PROXY_BLOCK_REFRESH_SECONDS": "0.3",
}
WAIT = 0.5


def _setup(platform: Platform) -> None:
    with platform.batch():
        platform.init_db()
        platform.create_user("dev", "dev-password-0001")
        platform.create_user("boss", "boss-password-0001")
        for group in ("acme", "acme/team", "globex"):
            platform.create_group(group, private=True)
        platform.add_member("acme", "boss", "owner")
        platform.add_member("acme", "dev", "guest")
        platform.add_member("acme/team", "dev", "developer")
        platform.add_member("globex", "dev", "developer")
        platform.setup_command("project", "create", "acme/team/app")
        platform.enable_proxy("acme")
        platform.enable_proxy("globex")


def _refused(skopeo: Skopeo, reference: str, reason: str) -> None:
    result = skopeo.inspect(reference, raw=True)
    assert result.returncode != 0, result.stdout
    assert reason in result.stderr, result.stderr


def test_a_ci_pull_is_found_by_digest_and_a_blocked_digest_is_refused_everywhere(
    platform_factory: t.Callable[..., Platform],
    upstream_factory: t.Callable[..., Registry],
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    upstream = upstream_factory()
    pushed = images.push(
        images.build_image(unique_name, layer_sizes=(2000,)),
        upstream,
        f"library/{unique_name}",
        "latest",
        workdir=tmp_path,
    )
    live = platform_factory(upstream.url, setup=_setup, extra_env=FAST, workers=1)
    conf = tmp_path / "registries.conf"
    conf.write_text("unqualified-search-registries = []\n")
    live.env.update(CONTAINERS_REGISTRIES_CONF=str(conf), TMPDIR=str(tmp_path))

    job = live.flask(
        "ci", "run", "acme/team/app", "--user", "dev", "--",
        "sh", str(JOB_SCRIPT), f"{unique_name}:latest",
        check=False,
    )  # fmt: skip
    assert job.returncode == 0, job.stdout + job.stderr
    digest = pushed.digest

    assert skopeo.login(live.host, "dev", "dev-password-0001").returncode == 0
    acme = live.image("acme", unique_name, "latest")
    globex = live.image("globex", unique_name, "latest")
    time.sleep(WAIT)
    assert skopeo.inspect(acme, raw=True).returncode == 0  # its request writes the batch

    token = live.flask("token", "create", "boss", "--scopes", "api").stdout.split()[-1]
    api = f"{live.url}/api/v4/groups/acme/dependency_proxy"
    headers = {"PRIVATE-TOKEN": token}
    found = requests.get(f"{api}/pulls", params={"digest": digest}, headers=headers, timeout=30)
    assert found.status_code == 200, found.text
    by_job = [pull for pull in found.json() if pull["principal"]["kind"] == "job_token"]
    assert len(by_job) == 1, found.json()
    assert by_job[0]["context"]["project"] == "acme/team/app"
    assert by_job[0]["context"]["job"].isdigit()
    assert (by_job[0]["reference"], by_job[0]["outcome"]) == ("latest", "miss")
    assert by_job[0]["principal"]["username"] == "dev"
    assert "skopeo" in (by_job[0]["user_agent"] or "")
    project = requests.get(
        f"{api}/pulls", params={"project": "acme/team/app"}, headers=headers, timeout=30
    )
    assert [pull["id"] for pull in project.json()] == [by_job[0]["id"]]

    cli = live.flask("dependency-proxy", "pulls", "--digest", digest, "--json")
    document = json.loads(cli.stdout)
    projects = [(p["context"] or {}).get("project") for p in document["pulls"]]
    assert "acme/team/app" in projects and document["pulls"][0]["group"] == "acme"

    # A group owner's block: refused in acme, by tag and by digest; globex still pulls.
    blocked = requests.post(
        f"{api}/blocks",
        json={"digest": digest, "reason": "compromised build 4711"},
        headers=headers,
        timeout=30,
    )
    assert blocked.status_code == 201, blocked.text
    assert blocked.json()["pulled"]["count"] >= 1
    assert blocked.json()["pulled"]["projects"] == ["acme/team/app"]
    _refused(skopeo, acme, "compromised build 4711")
    _refused(skopeo, live.image("acme", unique_name, digest), "compromised build 4711")
    assert skopeo.inspect(globex, raw=True).returncode == 0
    lifted = requests.delete(f"{api}/blocks/{blocked.json()['id']}", headers=headers, timeout=30)
    assert lifted.status_code == 200 and lifted.json()["removed_by"] == "boss"
    assert skopeo.inspect(acme, raw=True).returncode == 0

    # An instance administrator's block reaches every group, from another process.
    out = live.flask("dependency-proxy", "block", digest, "--reason", "CVE-2026-9999").stdout
    assert "Pulled" in out and "acme/team/app" in out
    time.sleep(WAIT)
    for reference in (acme, globex, live.image("globex", unique_name, digest)):
        _refused(skopeo, reference, "CVE-2026-9999")
    upstream.stop()
    for reference in (acme, globex):
        _refused(skopeo, reference, "CVE-2026-9999")  # not even the stale copy

    time.sleep(WAIT)
    skopeo.inspect(acme, raw=True)  # writes the batch
    outcomes = requests.get(
        f"{api}/pulls", params={"digest": digest}, headers=headers, timeout=30
    ).json()
    assert "blocked" in {pull["outcome"] for pull in outcomes}


def test_the_last_pulls_of_a_worker_that_goes_quiet_are_recorded(
    platform_factory: t.Callable[..., Platform],
    upstream_factory: t.Callable[..., Registry],
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """The pull record is written in batches; a worker that serves one pull and then
    nothing more still writes it, from its own thread, rather than at its next request
    (which may never come before it stops)."""
    upstream = upstream_factory()
    pushed = images.push(
        images.build_image(unique_name, layer_sizes=(2000,)),
        upstream,
        f"library/{unique_name}",
        "latest",
        workdir=tmp_path,
    )
    live = platform_factory(upstream.url, setup=_setup, extra_env=FAST, workers=1)
    assert skopeo.login(live.host, "dev", "dev-password-0001").returncode == 0
    assert skopeo.inspect(live.image("acme", unique_name, "latest"), raw=True).returncode == 0

    def recorded() -> list[t.Any]:
        cli = live.flask("dependency-proxy", "pulls", "--digest", pushed.digest, "--json")
        return list(json.loads(cli.stdout)["pulls"])

    deadline = time.monotonic() + 15
    while not (pulls := recorded()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [(p["group"], p["username"]) for p in pulls] == [("acme", "dev")]
