"""Registry tokens and CI variables."""

from __future__ import annotations

import pytest

from flask_dependency_proxy import ci_variables
from flask_dependency_proxy.auth.tokens import InvalidToken, TokenIssuer


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_token_round_trip_names_subject_and_no_secret() -> None:
    issuer = TokenIssuer(["s3cret-key"], ttl_seconds=900)
    token, claims = issuer.issue("user:7")
    assert claims.expires_at - claims.issued_at == 900
    assert "s3cret" not in token
    assert issuer.verify(token).subject == "user:7"


def test_tampered_and_foreign_tokens_are_rejected() -> None:
    issuer = TokenIssuer(["key-one"], ttl_seconds=900)
    token, _ = issuer.issue("user:7")
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(InvalidToken):
        issuer.verify(tampered)
    with pytest.raises(InvalidToken):
        TokenIssuer(["key-two"], ttl_seconds=900).verify(token)
    with pytest.raises(InvalidToken):
        issuer.verify("")


def test_expired_token_is_rejected() -> None:
    clock = Clock()
    issuer = TokenIssuer(["key"], ttl_seconds=60, clock=clock)
    token, _ = issuer.issue("user:7")
    clock.now += 61
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(token)


def test_rotated_secret_still_verifies_old_tokens() -> None:
    old = TokenIssuer(["old"], ttl_seconds=900)
    token, _ = old.issue("user:1")
    rotated = TokenIssuer(["new", "old"], ttl_seconds=900)
    assert rotated.verify(token).subject == "user:1"
    new_token, _ = rotated.issue("user:1")
    with pytest.raises(InvalidToken):
        old.verify(new_token)


@pytest.mark.parametrize(
    ("url", "server"),
    [
        ("https://Git.Example.com", "git.example.com:443"),
        ("http://git.example.com", "git.example.com:80"),
        ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
    ],
)
def test_ci_variables(url: str, server: str) -> None:
    variables = ci_variables(external_url=url, project_group_path="Org/Team", job_token="tok")
    assert variables == {
        "CI_DEPENDENCY_PROXY_USER": "gitlab-ci-token",
        "CI_DEPENDENCY_PROXY_PASSWORD": "tok",
        "CI_DEPENDENCY_PROXY_SERVER": server,
        "CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX": f"{server}/org/dependency_proxy/containers",
        "CI_DEPENDENCY_PROXY_DIRECT_GROUP_IMAGE_PREFIX": (
            f"{server}/org/team/dependency_proxy/containers"
        ),
    }


def test_refresh_token_round_trip_names_subject_and_lives_long() -> None:
    clock = Clock()
    issuer = TokenIssuer(["s3cret-key"], ttl_seconds=900, clock=clock)
    refresh = issuer.refresh_tokens(30 * 86400)
    token, claims = refresh.issue("pat:3")
    assert claims.expires_at - claims.issued_at == 30 * 86400
    assert "s3cret" not in token
    clock.now += 29 * 86400
    assert refresh.verify(token).subject == "pat:3"
    clock.now += 2 * 86400
    with pytest.raises(InvalidToken, match="expired"):
        refresh.verify(token)


def test_refresh_and_registry_tokens_are_not_interchangeable() -> None:
    issuer = TokenIssuer(["key"], ttl_seconds=900)
    refresh = issuer.refresh_tokens(86400)
    registry_token, _ = issuer.issue("user:7")
    refresh_token, _ = refresh.issue("user:7")
    with pytest.raises(InvalidToken):
        issuer.verify(refresh_token)
    with pytest.raises(InvalidToken):
        refresh.verify(registry_token)


def test_refresh_tokens_follow_secret_rotation() -> None:
    old = TokenIssuer(["old"], ttl_seconds=900).refresh_tokens(86400)
    token, _ = old.issue("user:1")
    assert TokenIssuer(["new", "old"], ttl_seconds=900).refresh_tokens(86400).verify(token)
    with pytest.raises(InvalidToken):
        TokenIssuer(["new"], ttl_seconds=900).refresh_tokens(86400).verify(token)


def test_refresh_token_tampered_or_oversized_is_rejected() -> None:
    refresh = TokenIssuer(["key"], ttl_seconds=900).refresh_tokens(86400)
    token, _ = refresh.issue("user:7")
    with pytest.raises(InvalidToken):
        refresh.verify(token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    with pytest.raises(InvalidToken):
        refresh.verify("x" * 5000)
    with pytest.raises(InvalidToken):
        refresh.verify("")
