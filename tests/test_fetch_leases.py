"""Fetch leases in the database (SQLite and PostgreSQL) and the peer route that other
hosts read a fetch through."""

from __future__ import annotations

import datetime as dt
import hashlib
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_dependency_proxy import state
from flask_dependency_proxy.coordination import PEER_BLOB_PATH, FetchLeases, PeerTokens
from flask_dependency_proxy.models.tables import utcnow

PEER_A = "http://10.0.0.1:8000"
PEER_B = "http://10.0.0.2:8000"
DIGEST = "sha256:" + "a" * 64


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def peer_app(app_factory: t.Callable[..., Flask]) -> Flask:
    return app_factory(DEPENDENCY_PROXY_PEER_URL=PEER_A)


@pytest.fixture
def engine(peer_app: Flask) -> sa.Engine:
    with peer_app.app_context():
        return state(None).cache.fetcher.fleet.leases._engine()  # type: ignore[union-attr]


@pytest.fixture
def made(engine: sa.Engine) -> t.Iterator[list[FetchLeases]]:
    """The leases a test made: released before its database goes."""
    leases: list[FetchLeases] = []
    yield leases
    for each in leases:
        each.release(DIGEST)


def _leases(made: list[FetchLeases], engine: sa.Engine, peer_url: str, clock: Clock) -> FetchLeases:
    leases = FetchLeases(lambda: engine, peer_url, ttl_seconds=10, clock=clock)
    made.append(leases)
    return leases


def test_the_first_host_to_claim_a_digest_fetches_and_the_others_follow_it(
    engine: sa.Engine, made: list[FetchLeases]
) -> None:
    clock = Clock()
    first, second = _leases(made, engine, PEER_A, clock), _leases(made, engine, PEER_B, clock)

    assert first.claim(DIGEST).ours
    claim = second.claim(DIGEST)

    assert not claim.ours and claim.peer_url == PEER_A
    # Claiming again while it holds the lease keeps it the fetching host.
    assert first.claim(DIGEST).ours


def test_a_released_lease_goes_to_the_next_claim(
    engine: sa.Engine, made: list[FetchLeases]
) -> None:
    clock = Clock()
    first, second = _leases(made, engine, PEER_A, clock), _leases(made, engine, PEER_B, clock)
    assert first.claim(DIGEST).ours

    first.release(DIGEST)

    assert second.claim(DIGEST).ours
    assert first.claim(DIGEST).peer_url == PEER_B


def test_a_lease_not_renewed_in_time_is_taken_over_and_a_renewed_one_is_not(
    engine: sa.Engine, made: list[FetchLeases]
) -> None:
    clock = Clock()
    first, second = _leases(made, engine, PEER_A, clock), _leases(made, engine, PEER_B, clock)
    assert first.claim(DIGEST).ours

    clock.now += dt.timedelta(seconds=8)
    assert first.renew() == 1
    clock.now += dt.timedelta(seconds=8)
    assert not second.claim(DIGEST).ours

    clock.now += dt.timedelta(seconds=11)
    assert second.claim(DIGEST).ours
    # The host that lost its lease renews nothing and follows the new holder.
    assert first.renew() == 0
    assert first.claim(DIGEST).peer_url == PEER_B


def test_a_database_that_cannot_be_reached_lets_the_host_fetch_itself() -> None:
    unreachable = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none")

    leases = FetchLeases(lambda: unreachable, PEER_A, ttl_seconds=10)

    assert leases.claim(DIGEST).ours


# -- the peer route ------------------------------------------------------------------------


def _committed(app: Flask, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with app.app_context():
        staged = state(None).store.stage(digest, len(data))
        staged.write(data)
        staged.commit()
    return digest


def _token(app: Flask, digest: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {PeerTokens([app.config['SECRET_KEY']]).issue(digest)}"}


def test_the_peer_route_serves_a_committed_blob_from_an_offset(peer_app: Flask) -> None:
    data = bytes(range(256)) * 9000
    digest = _committed(peer_app, data)
    client = peer_app.test_client()

    whole = client.get(f"{PEER_BLOB_PATH}{digest}", headers=_token(peer_app, digest))
    rest = client.get(f"{PEER_BLOB_PATH}{digest}?offset=1000000", headers=_token(peer_app, digest))

    assert whole.status_code == 200 and whole.data == data
    assert rest.status_code == 200 and rest.data == data[1_000_000:]
    assert rest.headers["Content-Length"] == str(len(data) - 1_000_000)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("{digest}", {}, 403),
        ("{digest}", {"Authorization": "Bearer not-a-token"}, 403),
        ("{digest}", {"Authorization": "Basic {token}"}, 403),
        ("{digest}", "other digest", 403),
        ("{digest}?offset=-1", "token", 400),
        ("{digest}?offset=1e9", "token", 400),
        ("{digest}?offset=99999999999999999999999", "token", 400),
        ("{digest}?offset=5000", "token", 416),
        ("sha256:" + "b" * 64, "token", 404),
        ("sha256:XYZ", "token", 404),
        ("..%2F..%2Fetc%2Fpasswd", "token", 404),
    ],
)
def test_the_peer_route_refuses_what_a_peer_would_not_send(
    peer_app: Flask, path: str, headers: t.Any, status: int
) -> None:
    digest = _committed(peer_app, b"small blob")
    target = path.format(digest=digest)
    if headers == "token":
        headers = _token(peer_app, target.split("?")[0])
    elif headers == "other digest":
        headers = _token(peer_app, "sha256:" + "c" * 64)
    elif "Authorization" in headers:
        token = _token(peer_app, digest)["Authorization"].split(" ", 1)[1]
        headers = {"Authorization": headers["Authorization"].format(token=token)}

    response = peer_app.test_client().get(f"{PEER_BLOB_PATH}{target}", headers=headers)

    assert response.status_code == status


def test_without_a_peer_url_there_is_no_peer_route(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory()
    digest = _committed(app, b"small blob")

    response = app.test_client().get(f"{PEER_BLOB_PATH}{digest}", headers=_token(app, digest))

    assert response.status_code == 404
