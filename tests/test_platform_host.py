"""The example platform's host adapter: who authenticates with what, and who reaches which group."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask_login import login_user

from examples.platform import services
from examples.platform.host import PlatformHost
from examples.platform.models import (
    CiJob,
    DeployToken,
    PersonalAccessToken,
    Project,
    User,
    db,
    find_project,
    find_user,
)
from flask_dependency_proxy.host import AuthFailure, HostAdapter, Principal, PrincipalKind
from tests.platform_fixtures import (
    World,
    build_world,
    dispose,
    expire,
    fresh_platform,
    make_app,
    platform_env_keys,
)

JOB_USER = "gitlab-ci-token"
GROUPS = ("org", "org/team", "org/team/sub", "other")

host = PlatformHost()


@pytest.fixture
def platform_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[Flask]:
    """A fresh platform on SQLite in ``tmp_path``."""
    yield from fresh_platform(tmp_path, monkeypatch)


@pytest.fixture
def world(platform_app: Flask) -> t.Iterator[World]:
    """The populated platform, inside an app context (popped after the test)."""
    with platform_app.app_context():
        yield build_world()


def pat(
    username: str, scopes: str = "read_registry,write_registry"
) -> tuple[PersonalAccessToken, str]:
    user = find_user(username)
    assert user is not None
    return services.create_personal_access_token(user, name="test", scopes=scopes)


def deploy_token(
    group: str, scopes: str = "read_registry,write_registry", **kw: t.Any
) -> tuple[DeployToken, str]:
    return services.create_deploy_token(services.require_group(group), scopes=scopes, **kw)


def job(project: str, username: str) -> tuple[CiJob, str]:
    found = find_project(project)
    assert isinstance(found, Project)
    return services.start_job(found, services.require_user(username))


def accepted(outcome: Principal | AuthFailure) -> Principal:
    assert isinstance(outcome, Principal), outcome
    return outcome


def readable(principal: Principal) -> tuple[bool, ...]:
    return tuple(host.can_read(principal, host.find_group(path)) for path in GROUPS)  # type: ignore[arg-type]


def test_platform_host_satisfies_the_protocol() -> None:
    assert isinstance(host, HostAdapter)


def test_find_group_ignores_case_and_returns_plain_values(world: World) -> None:
    found = host.find_group("ORG/Team")
    assert found is not None
    assert (found.id, found.full_path) == (world.group_ids["org/team"], "org/team")
    assert host.find_group("org/nope") is None
    assert host.find_group_by_id(world.group_ids["other"]).full_path == "other"  # type: ignore[union-attr]
    assert host.find_group_by_id(999_999) is None


# -- authenticate: passwords -------------------------------------------------------------


def test_password_login(world: World) -> None:
    principal = accepted(host.authenticate("dev", world.passwords["dev"]))
    assert principal == Principal(
        kind=PrincipalKind.USER, subject=f"user:{world.user_ids['dev']}", username="dev"
    )
    assert host.authenticate("dev", world.passwords["gus"]) is AuthFailure.INVALID
    assert host.authenticate("nobody", world.passwords["dev"]) is AuthFailure.INVALID
    assert host.authenticate("dev", "") is AuthFailure.INVALID
    assert host.authenticate("", world.passwords["dev"]) is AuthFailure.INVALID


def test_blocked_user_cannot_log_in_and_loses_every_credential(world: World) -> None:
    token, secret = pat("dev")
    before = [
        accepted(host.authenticate("dev", world.passwords["dev"])),
        accepted(host.authenticate("dev", secret)),
    ]
    _, job_secret = job("org/team/app", "dev")
    before.append(accepted(host.authenticate(JOB_USER, job_secret)))

    services.block_user("dev")

    assert host.authenticate("dev", world.passwords["dev"]) is AuthFailure.INVALID
    assert host.authenticate("dev", secret) is AuthFailure.INVALID
    assert host.authenticate(JOB_USER, job_secret) is AuthFailure.INVALID
    for principal in before:
        assert host.load_principal(principal.subject) is None
        assert not host.can_read(principal, host.find_group("org/team"))  # type: ignore[arg-type]


# -- authenticate: personal access tokens --------------------------------------------------


@pytest.mark.parametrize("scopes", ["read_registry,write_registry", "api", "api,read_user"])
def test_personal_access_token_with_registry_scopes(world: World, scopes: str) -> None:
    token, secret = pat("dev", scopes)
    assert secret.startswith("dppat-")
    principal = accepted(host.authenticate("dev", secret))
    assert principal.kind is PrincipalKind.PERSONAL_ACCESS_TOKEN
    assert principal.subject == f"pat:{token.id}"
    assert principal.username == "dev"
    assert principal.scopes == frozenset(scopes.split(","))
    assert secret not in principal.subject
    assert db.session.get(PersonalAccessToken, token.id).last_used_at is not None  # type: ignore[union-attr]


@pytest.mark.parametrize("scopes", ["read_registry", "write_registry", "read_api,read_repository"])
def test_personal_access_token_without_registry_scopes_is_insufficient(
    world: World, scopes: str
) -> None:
    _, secret = pat("dev", scopes)
    assert host.authenticate("dev", secret) is AuthFailure.INSUFFICIENT_SCOPE


def test_personal_access_token_only_with_its_owners_username(world: World) -> None:
    _, secret = pat("dev")
    assert host.authenticate("gus", secret) is AuthFailure.INVALID
    assert host.authenticate("nobody", secret) is AuthFailure.INVALID
    assert host.authenticate(JOB_USER, secret) is AuthFailure.INVALID


def test_revoked_and_expired_personal_access_tokens_are_invalid(world: World) -> None:
    revoked, revoked_secret = pat("dev")
    expired, expired_secret = pat("dev")
    subjects = [
        accepted(host.authenticate("dev", s)).subject for s in (revoked_secret, expired_secret)
    ]

    services.revoke_personal_access_token(revoked.id)
    expire(expired)

    assert host.authenticate("dev", revoked_secret) is AuthFailure.INVALID
    assert host.authenticate("dev", expired_secret) is AuthFailure.INVALID
    assert [host.load_principal(s) for s in subjects] == [None, None]


def test_a_token_shaped_wrong_secret_is_still_tried_as_a_password(world: World) -> None:
    user = find_user("out")
    assert isinstance(user, User)
    user.set_password("dppat-this-is-my-password")
    db.session.commit()
    assert (
        accepted(host.authenticate("out", "dppat-this-is-my-password")).kind is PrincipalKind.USER
    )
    assert host.authenticate("out", "dppat-something-else") is AuthFailure.INVALID


# -- authenticate: deploy tokens -------------------------------------------------------


def test_deploy_token_logs_in_with_its_username(world: World) -> None:
    token, secret = deploy_token("org/team")
    assert token.username == f"deploy-token-{token.id}"
    assert secret.startswith("dpdt-")
    principal = accepted(host.authenticate(token.username, secret))
    assert principal == Principal(
        kind=PrincipalKind.DEPLOY_TOKEN,
        subject=f"deploy_token:{token.id}",
        username=token.username,
        scopes=frozenset({"read_registry", "write_registry"}),
    )
    assert host.authenticate("dev", secret) is AuthFailure.INVALID
    assert host.authenticate(f"deploy-token-{token.id + 1}", secret) is AuthFailure.INVALID


def test_deploy_token_with_a_chosen_username(world: World) -> None:
    token, secret = deploy_token("org", username="mirror-bot")
    assert accepted(host.authenticate("mirror-bot", secret)).username == "mirror-bot"
    assert host.authenticate(f"deploy-token-{token.id}", secret) is AuthFailure.INVALID


def test_deploy_token_needs_both_registry_scopes(world: World) -> None:
    _, read_only = deploy_token("org", scopes="read_registry")
    token, repo_only = deploy_token("org", scopes="read_repository")
    assert (
        host.authenticate(f"deploy-token-{token.id - 1}", read_only)
        is AuthFailure.INSUFFICIENT_SCOPE
    )
    assert host.authenticate(token.username, repo_only) is AuthFailure.INSUFFICIENT_SCOPE


def test_revoked_and_expired_deploy_tokens_are_invalid(world: World) -> None:
    revoked, revoked_secret = deploy_token("org")
    expired, expired_secret = deploy_token("org")
    principals = [
        accepted(host.authenticate(revoked.username, revoked_secret)),
        accepted(host.authenticate(expired.username, expired_secret)),
    ]
    services.revoke_deploy_token(revoked.id)
    expire(expired)
    assert host.authenticate(revoked.username, revoked_secret) is AuthFailure.INVALID
    assert host.authenticate(expired.username, expired_secret) is AuthFailure.INVALID
    for principal in principals:
        assert host.load_principal(principal.subject) is None
        assert not host.can_read(principal, host.find_group("org"))  # type: ignore[arg-type]


# -- authenticate: CI job tokens ----------------------------------------------------------


def test_job_token_works_while_the_job_runs(world: World) -> None:
    running, secret = job("org/team/app", "dev")
    assert secret.startswith("dpjob-")
    principal = accepted(host.authenticate(JOB_USER, secret))
    assert principal.kind is PrincipalKind.JOB_TOKEN
    assert principal.subject == f"job:{running.id}"
    assert principal.username == "dev"
    assert host.load_principal(principal.subject) == principal

    services.finish_job(running)

    assert host.authenticate(JOB_USER, secret) is AuthFailure.INVALID
    assert host.load_principal(principal.subject) is None
    assert not host.can_read(principal, host.find_group("org/team"))  # type: ignore[arg-type]


def test_job_token_only_with_the_job_token_username(world: World) -> None:
    _, secret = job("org/team/app", "dev")
    assert host.authenticate("dev", secret) is AuthFailure.INVALID
    assert host.authenticate(JOB_USER, world.passwords["dev"]) is AuthFailure.INVALID


def test_job_token_username_comes_from_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in platform_env_keys():
        monkeypatch.delenv(key)
    flask_app = make_app(tmp_path, DEPENDENCY_PROXY_JOB_TOKEN_USERNAME="ci-bot")
    try:
        with flask_app.app_context():
            build_world()
            _, secret = job("org/team/app", "dev")
            assert accepted(host.authenticate("ci-bot", secret)).kind is PrincipalKind.JOB_TOKEN
            assert host.authenticate(JOB_USER, secret) is AuthFailure.INVALID
    finally:
        dispose(flask_app)


# -- load_principal ---------------------------------------------------------------------


def test_load_principal_round_trips_every_kind(world: World) -> None:
    _, pat_secret = pat("gus")
    dt, dt_secret = deploy_token("org")
    _, job_secret = job("org/team/app", "dev")
    for outcome in (
        host.authenticate("gus", world.passwords["gus"]),
        host.authenticate("gus", pat_secret),
        host.authenticate(dt.username, dt_secret),
        host.authenticate(JOB_USER, job_secret),
    ):
        principal = accepted(outcome)
        assert host.load_principal(principal.subject) == principal


@pytest.mark.parametrize(
    "subject",
    ["", "user", "user:", "user:abc", "user:999999", "pat:999999", "job:-1", "group:1", "user:1:2"],
)
def test_load_principal_refuses_unknown_subjects(world: World, subject: str) -> None:
    assert host.load_principal(subject) is None


# -- can_read: the access matrix --------------------------------------------------------


def _password(world: World, who: str) -> Principal:
    return accepted(host.authenticate(who, world.passwords[who]))


def _pat(world: World, who: str) -> Principal:
    return accepted(host.authenticate(who, pat(who)[1]))


def _deploy(world: World, group: str) -> Principal:
    token, secret = deploy_token(group)
    return accepted(host.authenticate(token.username, secret))


def _job(world: World, spec: str) -> Principal:
    project, _, who = spec.partition(" as ")
    return accepted(host.authenticate(JOB_USER, job(project, who)[1]))


T, F = True, False


@pytest.mark.parametrize(
    ("make", "who", "expected"),
    [
        # Readable: org, org/team, org/team/sub, other.
        (_password, "root", (T, T, T, T)),
        (_password, "gus", (T, T, T, F)),
        (_password, "dev", (F, T, T, F)),
        (_password, "owner", (T, T, T, F)),
        (_password, "both", (T, T, T, T)),
        # org is public, but browsing is not pulling: members only.
        (_password, "out", (F, F, F, F)),
        (_pat, "root", (T, T, T, T)),
        (_pat, "gus", (T, T, T, F)),
        (_pat, "dev", (F, T, T, F)),
        (_pat, "out", (F, F, F, F)),
        (_deploy, "org", (T, T, T, F)),
        (_deploy, "org/team", (F, T, T, F)),
        (_deploy, "org/team/sub", (F, F, T, F)),
        (_deploy, "other", (F, F, F, T)),
        (_job, "org/team/app as dev", (F, T, T, F)),
        # A job reaches only its project's top-level group, whatever else its user may read.
        (_job, "org/team/app as both", (T, T, T, F)),
        (_job, "other/tool as both", (F, F, F, T)),
        (_job, "org/team/app as root", (T, T, T, F)),
        (_job, "other/tool as out", (F, F, F, F)),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)).strip("_"),
)
def test_can_read(
    world: World, make: t.Callable[[World, str], Principal], who: str, expected: tuple[bool, ...]
) -> None:
    assert readable(make(world, who)) == expected


def test_membership_changes_take_effect_at_once(world: World) -> None:
    principal = _password(world, "out")
    assert readable(principal) == (F, F, F, F)
    services.add_member("org/team", "out", "guest")
    assert readable(principal) == (F, T, T, F)


def test_minimum_read_role_is_configurable(platform_app: Flask, world: World) -> None:
    platform_app.config["DEPENDENCY_PROXY_MIN_READ_ROLE"] = "reporter"
    assert readable(_password(world, "gus")) == (F, F, F, F)
    assert readable(_password(world, "dev")) == (F, T, T, F)


def test_can_read_an_unknown_group_id_is_false(world: World) -> None:
    from flask_dependency_proxy.host import Group as ProxyGroup

    assert not host.can_read(_password(world, "root"), ProxyGroup(id=999_999, full_path="gone"))


# -- can_admin ---------------------------------------------------------------------------


def administrable(principal: Principal) -> tuple[bool, ...]:
    return tuple(host.can_admin(principal, host.find_group(path)) for path in GROUPS)  # type: ignore[arg-type]


def test_can_admin(world: World) -> None:
    assert administrable(_password(world, "root")) == (T, T, T, T)
    assert administrable(_password(world, "owner")) == (T, T, T, F)
    assert administrable(_pat(world, "owner")) == (T, T, T, F)
    for who in ("maint", "dev", "gus", "out", "both"):
        assert administrable(_password(world, who)) == (F, F, F, F), who
    services.add_member("org/team/sub", "dev", "owner")
    assert administrable(_password(world, "dev")) == (F, F, T, F)


def test_deploy_and_job_tokens_never_administer(world: World) -> None:
    assert administrable(_deploy(world, "org")) == (F, F, F, F)
    assert administrable(_job(world, "org/team/app as owner")) == (F, F, F, F)
    assert administrable(_job(world, "org/team/app as root")) == (F, F, F, F)


def test_admin_role_is_configurable(platform_app: Flask, world: World) -> None:
    platform_app.config["DEPENDENCY_PROXY_ADMIN_ROLE"] = "maintainer"
    assert administrable(_password(world, "maint")) == (T, T, T, F)
    assert administrable(_password(world, "dev")) == (F, F, F, F)


# -- REST API tokens and the web session -------------------------------------------------


def test_api_token_needs_the_api_scope(world: World) -> None:
    token, api_secret = pat("owner", "api")
    _, registry_secret = pat("owner")
    principal = accepted(host.authenticate_api_token(api_secret))
    assert principal.subject == f"pat:{token.id}"
    assert host.authenticate_api_token(registry_secret) is AuthFailure.INSUFFICIENT_SCOPE
    assert host.authenticate_api_token("dppat-unknown") is AuthFailure.INVALID
    assert host.authenticate_api_token(world.passwords["owner"]) is AuthFailure.INVALID
    _, deploy_secret = deploy_token("org")
    assert host.authenticate_api_token(deploy_secret) is AuthFailure.INVALID
    services.revoke_personal_access_token(token.id)
    assert host.authenticate_api_token(api_secret) is AuthFailure.INVALID


def test_current_principal_is_the_signed_in_user(platform_app: Flask, world: World) -> None:
    assert host.current_principal() is None  # no request at all
    with platform_app.test_request_context("/"):
        assert host.current_principal() is None
        user = find_user("gus")
        assert user is not None
        login_user(user)
        assert host.current_principal() == _password(world, "gus")
