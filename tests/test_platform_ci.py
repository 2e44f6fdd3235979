"""A CI job of the example platform pulls through the live proxy with only its CI variables.

``flask --app examples.platform ci run`` starts the job; ``examples/ci/job.sh`` logs in
with skopeo using ``CI_DEPENDENCY_PROXY_*`` and copies the image out of the group's proxy.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from tests.support import images
from tests.support.platform import Platform
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e
#: The subject is the CI job's variables and token, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_SCRIPT = REPO_ROOT / "examples" / "ci" / "job.sh"


def _setup(platform: Platform) -> None:
    with platform.batch():
        platform.init_db()
        platform.create_user("dev", "dev-password-0001")
        platform.create_group("acme")
        platform.create_group("acme/team", private=True)
        platform.add_member("acme/team", "dev", "developer")
        platform.add_member("acme", "dev", "guest")
        platform.setup_command("project", "create", "acme/team/app")
        platform.enable_proxy("acme")


def _job_env(platform: Platform, tmp_path: Path) -> None:
    """What a runner gives skopeo: no host registries.conf, a scratch TMPDIR."""
    conf = tmp_path / "registries.conf"
    conf.write_text("unqualified-search-registries = []\n")
    platform.env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    platform.env["TMPDIR"] = str(tmp_path)


def test_ci_job_pulls_through_the_group_image_prefix(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    unique_name: str,
    tmp_path: Path,
) -> None:
    # A one-segment name is an official image: the proxy fetches library/<name>.
    pushed = images.push(
        images.build_image(unique_name, layer_sizes=(2000,)),
        upstream,
        f"library/{unique_name}",
        "latest",
        workdir=tmp_path,
    )
    live = platform_factory(upstream.url, setup=_setup)
    _job_env(live, tmp_path)
    keep = tmp_path / "kept"
    keep.mkdir()

    result = live.flask(
        "ci", "run", "acme/team/app", "--user", "dev", "--",
        "sh", str(JOB_SCRIPT), f"{unique_name}:latest", str(keep),
        check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{live.host}/acme/dependency_proxy/containers/{unique_name}:latest" in result.stdout
    # The job got upstream's exact manifest and every blob it names.
    assert (keep / "image" / "manifest.json").read_bytes() == pushed.manifest
    for digest in pushed.blob_digests:
        assert (keep / "image" / digest.removeprefix("sha256:")).read_bytes() == upstream.read_blob(
            digest
        )


def test_ci_job_token_is_refused_once_the_job_ends(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    tmp_path: Path,
) -> None:
    live = platform_factory(upstream.url, setup=_setup)
    saved = tmp_path / "token"
    # The job keeps its token and logs in to the token endpoint with it.
    script = (
        f'printf %s "$CI_JOB_TOKEN" > {saved}; '
        'curl -fsS -o /dev/null -w "%{http_code}" '
        '-u "$CI_DEPENDENCY_PROXY_USER:$CI_DEPENDENCY_PROXY_PASSWORD" '
        f'"{live.url}/jwt/auth?service=dependency_proxy"'
    )
    during = live.flask("ci", "run", "acme/team/app", "--user", "dev", "--", "sh", "-c", script)
    assert during.stdout.strip().endswith("200"), during.stdout + during.stderr

    after = live.token("gitlab-ci-token", saved.read_text())
    assert after.status_code == 401, after.text
    # The job's failure is the command's failure.
    failed = live.flask(
        "ci", "run", "acme/team/app", "--user", "dev", "--", "sh", "-c", "exit 7", check=False
    )
    assert failed.returncode == 7
