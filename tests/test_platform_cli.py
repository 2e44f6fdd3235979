"""The example platform's operator commands, through Flask's CLI runner."""

from __future__ import annotations

import json
import sys
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskCliRunner

from examples.platform.host import PlatformHost
from examples.platform.models import CiJob, DeployToken, Group, PersonalAccessToken, db
from flask_dependency_proxy.host import AuthFailure, Principal, PrincipalKind
from tests.platform_fixtures import fresh_platform

REPO_ROOT = Path(__file__).resolve().parents[1]
PROXY = "dependency_proxy/containers"
host = PlatformHost()


@pytest.fixture
def platform_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[Flask]:
    """A fresh platform on SQLite in ``tmp_path``."""
    yield from fresh_platform(
        tmp_path, monkeypatch, DEPENDENCY_PROXY_EXTERNAL_URL="http://registry.test:8080"
    )


@pytest.fixture
def runner(platform_app: Flask) -> FlaskCliRunner:
    return platform_app.test_cli_runner()


def ok(runner: FlaskCliRunner, *args: str) -> str:
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def fails(runner: FlaskCliRunner, *args: str) -> str:
    result = runner.invoke(args=list(args))
    assert result.exit_code != 0, (args, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.output


def last_line(output: str) -> str:
    return output.rstrip("\n").rsplit("\n", 1)[-1]


def authenticate(platform_app: Flask, username: str, secret: str) -> Principal | AuthFailure:
    with platform_app.app_context():
        return host.authenticate(username, secret)


@pytest.fixture
def seeded(runner: FlaskCliRunner) -> FlaskCliRunner:
    ok(runner, "user", "create", "alice", "--password", "alice-pw")
    ok(runner, "group", "create", "org")
    ok(runner, "group", "create", "org/team", "--private")
    ok(runner, "group", "add-member", "org", "alice", "--role", "developer")
    ok(runner, "project", "create", "org/team/app")
    return runner


def test_init_db_is_repeatable_and_creates_both_table_sets(
    platform_app: Flask, runner: FlaskCliRunner
) -> None:
    ok(runner, "init-db")
    ok(runner, "init-db")
    with platform_app.app_context():
        tables = set(sa.inspect(db.engine).get_table_names())
    assert {
        "users",
        "groups",
        "memberships",
        "personal_access_tokens",
        "deploy_tokens",
        "projects",
        "ci_jobs",
    } <= tables
    assert any(name.startswith("dependency_proxy_") for name in tables)


def test_user_create_and_block(platform_app: Flask, runner: FlaskCliRunner) -> None:
    ok(runner, "user", "create", "alice", "--password", "alice-pw")
    ok(runner, "user", "create", "root", "--password", "root-pw", "--admin")
    assert isinstance(authenticate(platform_app, "alice", "alice-pw"), Principal)
    assert "already exists" in fails(runner, "user", "create", "alice", "--password", "x")
    assert "reserved" in fails(runner, "user", "create", "gitlab-ci-token", "--password", "x")

    ok(runner, "user", "block", "alice")
    assert authenticate(platform_app, "alice", "alice-pw") is AuthFailure.INVALID
    assert "No user named 'bob'" in fails(runner, "user", "block", "bob")


def test_user_create_prompts_for_a_password(platform_app: Flask, runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["user", "create", "alice"], input="s3cret\ns3cret\n")
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    assert isinstance(authenticate(platform_app, "alice", "s3cret"), Principal)


def test_group_create_needs_the_parent_and_lowercases(
    platform_app: Flask, runner: FlaskCliRunner
) -> None:
    output = fails(runner, "group", "create", "org/team")
    assert "Parent group 'org' does not exist" in output
    ok(runner, "group", "create", "Org")
    ok(runner, "group", "create", "ORG/Team", "--private")
    assert "already exists" in fails(runner, "group", "create", "org/team")
    with platform_app.app_context():
        groups = {
            g.full_path: (g.name, g.private, g.parent_id)
            for g in db.session.scalars(sa.select(Group))
        }
    org_id = host_group_id(platform_app, "org")
    assert groups == {"org": ("Org", False, None), "org/team": ("Team", True, org_id)}


def test_subgroups_of_private_groups_are_private(runner: FlaskCliRunner) -> None:
    ok(runner, "group", "create", "secret", "--private")
    assert "Created private group secret/inner" in ok(runner, "group", "create", "secret/inner")


def host_group_id(platform_app: Flask, path: str) -> int:
    with platform_app.app_context():
        found = host.find_group(path)
        assert found is not None
        return found.id


@pytest.mark.parametrize(
    "path", ["", "bad name", "ok//x", "-x", "a..b", "dependency_proxy", "ok/UPPER_", "ok/é"]
)
def test_group_create_rejects_paths_unusable_in_image_names(
    runner: FlaskCliRunner, path: str
) -> None:
    ok(runner, "group", "create", "ok")
    fails(runner, "group", "create", path)


def test_add_member_sets_and_changes_roles(platform_app: Flask, seeded: FlaskCliRunner) -> None:
    alice = authenticate(platform_app, "alice", "alice-pw")
    assert isinstance(alice, Principal)
    with platform_app.app_context():
        team = host.find_group("org/team")
        assert team is not None
        assert host.can_read(alice, team) and not host.can_admin(alice, team)
    ok(seeded, "group", "add-member", "org", "alice", "--role", "OWNER")
    with platform_app.app_context():
        assert host.can_admin(alice, team)
    assert "Invalid value for '--role'" in fails(
        seeded, "group", "add-member", "org", "alice", "--role", "boss"
    )
    assert "No user named" in fails(
        seeded, "group", "add-member", "org", "nobody", "--role", "guest"
    )
    assert "No group at" in fails(seeded, "group", "add-member", "nope", "alice", "--role", "guest")


def test_token_create_prints_the_token_last_and_revoke_ends_it(
    platform_app: Flask, seeded: FlaskCliRunner
) -> None:
    output = ok(
        seeded,
        "token",
        "create",
        "alice",
        "--scopes",
        "read_registry,write_registry",
        "--name",
        "laptop",
    )
    secret = last_line(output)
    assert secret.startswith("dppat-") and " " not in secret
    principal = authenticate(platform_app, "alice", secret)
    assert isinstance(principal, Principal)
    assert principal.kind is PrincipalKind.PERSONAL_ACCESS_TOKEN
    with platform_app.app_context():
        token = db.session.scalars(sa.select(PersonalAccessToken)).one()
        assert (token.name, token.expires_at, token.token_digest != secret) == (
            "laptop",
            None,
            True,
        )

    ok(seeded, "token", "revoke", str(token.id))
    assert authenticate(platform_app, "alice", secret) is AuthFailure.INVALID
    assert "No personal access token" in fails(seeded, "token", "revoke", "999")


def test_token_create_with_expiry_and_bad_scopes(
    platform_app: Flask, seeded: FlaskCliRunner
) -> None:
    ok(seeded, "token", "create", "alice", "--scopes", "api", "--expires-days", "7")
    with platform_app.app_context():
        token = db.session.scalars(sa.select(PersonalAccessToken)).one()
        assert token.expires_at is not None and 6 <= (token.expires_at - token.created_at).days <= 7
    assert "Unknown scope(s) root" in fails(
        seeded, "token", "create", "alice", "--scopes", "api,root"
    )
    assert "at least 1" in fails(
        seeded, "token", "create", "alice", "--scopes", "api", "--expires-days", "0"
    )
    assert "No user named" in fails(seeded, "token", "create", "bob", "--scopes", "api")


def test_token_without_registry_scopes_is_refused_with_insufficient_scope(
    platform_app: Flask, seeded: FlaskCliRunner
) -> None:
    secret = last_line(ok(seeded, "token", "create", "alice", "--scopes", "read_registry"))
    assert authenticate(platform_app, "alice", secret) is AuthFailure.INSUFFICIENT_SCOPE


def test_deploy_token_create_prints_username_and_token_and_revoke_ends_it(
    platform_app: Flask, seeded: FlaskCliRunner
) -> None:
    output = ok(
        seeded, "deploy-token", "create", "org/team", "--scopes", "read_registry,write_registry"
    )
    username, secret = last_line(output).split(" ")
    with platform_app.app_context():
        token = db.session.scalars(sa.select(DeployToken)).one()
    assert username == f"deploy-token-{token.id}"
    principal = authenticate(platform_app, username, secret)
    assert isinstance(principal, Principal) and principal.kind is PrincipalKind.DEPLOY_TOKEN

    ok(seeded, "deploy-token", "revoke", str(token.id))
    assert authenticate(platform_app, username, secret) is AuthFailure.INVALID


def test_deploy_token_create_options(platform_app: Flask, seeded: FlaskCliRunner) -> None:
    output = ok(
        seeded,
        "deploy-token", "create", "org", "--scopes", "read_registry,write_registry",
        "--expires-days", "30", "--username", "mirror", "--name", "mirror job",
    )  # fmt: skip
    username, secret = last_line(output).split(" ")
    assert username == "mirror"
    assert isinstance(authenticate(platform_app, "mirror", secret), Principal)
    assert "No group at" in fails(
        seeded, "deploy-token", "create", "nope", "--scopes", "read_registry"
    )
    assert "Unknown scope(s) api" in fails(
        seeded, "deploy-token", "create", "org", "--scopes", "api"
    )


def test_deploy_token_and_user_names_never_collide(seeded: FlaskCliRunner) -> None:
    """A deploy token never shares its login name with a user (in any case), neither a
    chosen name nor the ``deploy-token-<id>`` ones given by default."""
    scopes = ("--scopes", "read_registry")
    for taken in ("alice", "ALICE"):
        assert "a user's name" in fails(
            seeded, "deploy-token", "create", "org", *scopes, "--username", taken
        )
    assert "given to tokens without a username" in fails(
        seeded, "deploy-token", "create", "org", *scopes, "--username", "deploy-token-99"
    )
    ok(seeded, "deploy-token", "create", "org", *scopes, "--username", "mirror-bot")
    assert "A deploy token is called" in fails(
        seeded, "user", "create", "Mirror-Bot", "--password", "pw-123456"
    )
    default_name = last_line(ok(seeded, "deploy-token", "create", "org", *scopes)).split()[0]
    assert default_name.startswith("deploy-token-")
    assert "reserved" in fails(seeded, "user", "create", default_name, "--password", "pw")
    assert "reserved" in fails(seeded, "user", "create", "Deploy-Token-7", "--password", "pw")
    assert "already exists" in fails(seeded, "user", "create", "Alice", "--password", "pw")


def test_project_create(platform_app: Flask, seeded: FlaskCliRunner) -> None:
    assert "already exists" in fails(seeded, "project", "create", "org/team/app")
    assert "No group at 'nope'" in fails(seeded, "project", "create", "nope/app")
    assert "GROUP/NAME" in fails(seeded, "project", "create", "app")
    assert "a group already uses" in fails(seeded, "project", "create", "org/team").lower()


# -- ci run ----------------------------------------------------------------------------


def python_job(script: str) -> list[str]:
    """A CI job command: this interpreter running ``script``."""
    return [sys.executable, "-c", script]


@pytest.mark.process
def test_ci_run_passes_the_ci_variables(
    platform_app: Flask, seeded: FlaskCliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "env.json"
    script = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    ok(seeded, "ci", "run", "org/team/app", "--user", "alice", "--", *python_job(script))
    env = json.loads(out.read_text())
    token = env["CI_JOB_TOKEN"]
    assert token.startswith("dpjob-")
    server = "registry.test:8080"
    assert {key: value for key, value in env.items() if key.startswith("CI_")} == {
        "CI_JOB_TOKEN": token,
        "CI_JOB_ID": env["CI_JOB_ID"],
        "CI_PROJECT_PATH": "org/team/app",
        "CI_SERVER_HOST": "registry.test",
        "CI_SERVER_PORT": "8080",
        "CI_SERVER_URL": "http://registry.test:8080",
        "CI_DEPENDENCY_PROXY_USER": "gitlab-ci-token",
        "CI_DEPENDENCY_PROXY_PASSWORD": token,
        "CI_DEPENDENCY_PROXY_SERVER": "registry.test:8080",
        "CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX": f"{server}/org/{PROXY}",
        "CI_DEPENDENCY_PROXY_DIRECT_GROUP_IMAGE_PREFIX": f"{server}/org/team/{PROXY}",
    }
    assert env["CI"] == "true"
    assert "PATH" in env  # the operator's environment is passed on


#: A job that asks the platform (same database, configured by the environment it
#: inherits) to check its own token, as the registry does when the job pulls.
JOB_CHECKING_ITS_TOKEN = """
import json, os, sys
from examples.platform import create_app
from examples.platform.host import PlatformHost
with create_app().app_context():
    outcome = PlatformHost().authenticate(
        os.environ["CI_DEPENDENCY_PROXY_USER"], os.environ["CI_DEPENDENCY_PROXY_PASSWORD"]
    )
with open(sys.argv[1], "w") as f:
    json.dump({"outcome": repr(outcome), "token": os.environ["CI_JOB_TOKEN"]}, f)
"""


@pytest.mark.process
def test_ci_run_job_token_works_only_while_the_job_runs(
    platform_app: Flask, seeded: FlaskCliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("DATABASE_URL", platform_app.config["SQLALCHEMY_DATABASE_URI"])
    monkeypatch.setenv("SECRET_KEY", "job-side")
    monkeypatch.setenv("DEPENDENCY_PROXY_STORAGE_PATH", str(tmp_path / "store"))
    result_file = tmp_path / "auth.json"
    script = [*python_job(JOB_CHECKING_ITS_TOKEN), str(result_file)]
    ok(seeded, "ci", "run", "org/team/app", "--user", "alice", "--", *script)
    seen = json.loads(result_file.read_text())
    assert "kind=<PrincipalKind.JOB_TOKEN" in seen["outcome"]
    assert "username='alice'" in seen["outcome"]
    assert authenticate(platform_app, "gitlab-ci-token", seen["token"]) is AuthFailure.INVALID
    with platform_app.app_context():
        job = db.session.scalars(sa.select(CiJob)).one()
        assert (job.status, job.finished_at is not None) == ("finished", True)


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (python_job("raise SystemExit(3)"), 3),
        (python_job("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"), 128 + 15),
        (["/nonexistent/command"], 127),
    ],
)
@pytest.mark.process
def test_ci_run_exits_with_the_commands_status_and_finishes_the_job(
    platform_app: Flask, seeded: FlaskCliRunner, command: list[str], status: int
) -> None:
    result = seeded.invoke(args=["ci", "run", "org/team/app", "--user", "alice", "--", *command])
    assert result.exit_code == status, result.output
    with platform_app.app_context():
        assert [j.status for j in db.session.scalars(sa.select(CiJob))] == ["finished"]


def test_ci_run_refusals(seeded: FlaskCliRunner) -> None:
    assert "No project at" in fails(
        seeded, "ci", "run", "org/nope", "--user", "alice", "--", "true"
    )
    assert "No user named" in fails(
        seeded, "ci", "run", "org/team/app", "--user", "bob", "--", "true"
    )
    ok(seeded, "user", "block", "alice")
    assert "blocked" in fails(seeded, "ci", "run", "org/team/app", "--user", "alice", "--", "true")
    assert "Missing argument" in fails(seeded, "ci", "run", "org/team/app", "--user", "alice")


def test_dependency_proxy_commands_come_from_the_extension(seeded: FlaskCliRunner) -> None:
    assert "enabled" in ok(seeded, "dependency-proxy", "enable", "org/team")
    assert "disabled" in ok(seeded, "dependency-proxy", "disable", "ORG/team")
