"""Fetch leases in the database (SQLite and PostgreSQL) and the peer route that other
hosts read a fetch through."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import threading
import time
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_dependency_proxy import state
from flask_dependency_proxy.fetch.fetcher import BlobFetcher, Committed
from flask_dependency_proxy.fetch.fleet import CommittedMeanwhile, FleetSource
from flask_dependency_proxy.fetch.leases import FetchLeases
from flask_dependency_proxy.fetch.peer_tokens import PEER_BLOB_PATH, PeerTokens
from flask_dependency_proxy.models.tables import utcnow
from flask_dependency_proxy.stores.filesystem import FilesystemStore
from tests.support.httpserver import BackgroundServer

PEER_A = "http://10.0.0.1:8000"
PEER_B = "http://10.0.0.2:8000"
#: Host B's address: its peer requests come from there.
B_ADDRESS = "10.0.0.2"
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


def test_a_host_whose_token_the_peer_refuses_fetches_from_upstream_itself(
    engine: sa.Engine, made: list[FetchLeases]
) -> None:
    """A peer on another version (or with the clocks apart) refuses every token: the
    follower fetches the blob itself at once instead of waiting out the lease."""
    _Refuses.asked = []
    refusing = BackgroundServer("refusing peer")
    refusing.start(_Refuses)
    try:
        clock = Clock()
        holder = _leases(made, engine, refusing.url, clock)
        follower = _leases(made, engine, PEER_B, clock)
        assert holder.claim(DIGEST).ours
        source = FleetSource(follower, PeerTokens(["secret"], PEER_B))
        opened: list[int] = []

        def open_upstream(offset: int) -> t.Any:
            opened.append(offset)
            return "upstream stream"

        opener = source.opener(DIGEST, open_upstream)
        started = time.monotonic()
        assert opener(7) == "upstream stream"

        assert opened == [7] and not opener.from_peer
        assert _Refuses.asked == [f"{PEER_BLOB_PATH}{DIGEST}?offset=7"]
        assert time.monotonic() - started < 5
    finally:
        refusing.stop()


def test_a_lease_let_go_because_its_blob_was_committed_fetches_nothing_again(
    engine: sa.Engine, made: list[FetchLeases], tmp_path: Path
) -> None:
    """A host finds the blob missing, then claims a lease its holder let go of because it
    just committed the blob: the store is asked again before upstream is."""
    data = b"a tiny config blob"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store = FilesystemStore(str(tmp_path))
    looked = store.size

    def committed_by_another_host_after_the_first_look(asked: str) -> int | None:
        if asked != digest or store.size is looked:
            return looked(asked)
        store.size = looked  # type: ignore[method-assign]
        staged = store.stage(digest, len(data))
        staged.write(data)
        staged.commit()
        return None

    store.size = committed_by_another_host_after_the_first_look  # type: ignore[method-assign]
    leases = _leases(made, engine, PEER_B, Clock())
    fetcher = BlobFetcher(store, fleet=FleetSource(leases, PeerTokens(["secret"], PEER_B)))

    found = fetcher.fetch(digest, lambda offset: pytest.fail("upstream asked again"))

    assert found == Committed(len(data))
    assert leases.renew() == 0  # the lease is let go

    # A fetch that resumes (at an offset) is never told the blob is done.
    opener = FleetSource(leases, PeerTokens(["secret"], PEER_B)).opener(
        digest, lambda offset: f"upstream from {offset}", store.size
    )
    assert opener(5) == "upstream from 5"
    with pytest.raises(CommittedMeanwhile):
        opener(0)
    opener.release()


@pytest.mark.parametrize("peer_commits", [True, False])
def test_a_host_that_read_from_its_peer_waits_for_the_peer_s_commit(
    engine: sa.Engine, made: list[FetchLeases], peer_commits: bool
) -> None:
    """The peer's stream ends when the blob is verified, before its upload: the reading
    host waits while the peer holds the lease, then keeps its own copy only when the
    peer let go without committing."""
    clock = Clock()
    peer, reader = _leases(made, engine, PEER_A, clock), _leases(made, engine, PEER_B, clock)
    assert peer.claim(DIGEST).ours
    stored: dict[str, int] = {}
    opener = FleetSource(reader, PeerTokens(["secret"], PEER_B)).opener(
        DIGEST, lambda offset: pytest.fail("upstream asked"), stored.get
    )
    answer: list[bool] = []
    waiting = threading.Thread(target=lambda: answer.append(opener.peer_committed(250)))
    waiting.start()
    time.sleep(0.5)
    assert answer == [], "the peer still holds the lease: its upload is running"
    if peer_commits:
        stored[DIGEST] = 250
    peer.release(DIGEST)
    waiting.join(10)
    assert answer == [peer_commits]
    opener.release()


class _Refuses(http.server.BaseHTTPRequestHandler):
    asked: t.ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: t.Any) -> None:
        pass


# -- the peer route ------------------------------------------------------------------------


def _committed(app: Flask, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with app.app_context():
        staged = state(None).store.stage(digest, len(data))
        staged.write(data)
        staged.commit()
    return digest


def _token(
    app: Flask, digest: str, offset: int = 0, *, requester: str = PEER_B, holder: str = PEER_A
) -> dict[str, str]:
    """What host ``requester`` sends to read ``digest`` from ``offset`` at ``holder``."""
    token = PeerTokens([app.config["SECRET_KEY"]], requester).issue(holder, digest, offset)
    return {"Authorization": f"Bearer {token}"}


def _get(
    app: Flask, path: str, headers: dict[str, str], *, remote: str = B_ADDRESS, port: int = 8000
) -> t.Any:
    """``GET`` on the peer route, sent from ``remote`` to the listener on ``port``."""
    return app.test_client().get(
        f"{PEER_BLOB_PATH}{path}",
        headers=headers,
        base_url=f"http://10.0.0.1:{port}",
        environ_base={"REMOTE_ADDR": remote},
    )


def test_the_peer_route_serves_a_committed_blob_from_an_offset(peer_app: Flask) -> None:
    data = bytes(range(256)) * 9000
    digest = _committed(peer_app, data)

    whole = _get(peer_app, digest, _token(peer_app, digest))
    rest = _get(peer_app, f"{digest}?offset=1000000", _token(peer_app, digest, 1_000_000))

    assert whole.status_code == 200 and whole.data == data
    assert rest.status_code == 200 and rest.data == data[1_000_000:]
    assert rest.headers["Content-Length"] == str(len(data) - 1_000_000)


#: The requests a peer never sends, each with the token it carries: ``"token"`` is a
#: token host B made for this very path (offset 0), from B's address.
REFUSED = [
    ("{digest}", {}, 403),
    ("{digest}", {"Authorization": "Bearer not-a-token"}, 403),
    ("{digest}", {"Authorization": "Basic {token}"}, 403),
    ("{digest}", "other digest", 403),
    ("{digest}?offset=1000", "token", 403),  # the token is for offset 0
    ("{digest}", "token for another holder", 403),
    ("{digest}", "token from another host", 403),
    ("{digest}", "replayed from elsewhere", 403),
    ("{digest}?offset=-1", "token", 400),
    ("{digest}?offset=1e9", "token", 400),
    ("{digest}?offset=%C2%B2", "token", 400),  # "²": a digit to str.isdigit()
    ("{digest}?offset=%D9%A1", "token", 400),  # Arabic-Indic one
    ("{digest}?offset=99999999999999999999999", "token", 400),
    ("sha256:" + "b" * 64, "token", 404),
    ("sha256:XYZ", "token", 404),
    ("..%2F..%2Fetc%2Fpasswd", "token", 404),
    # Without a valid token nothing about the path is looked at.
    ("sha256:XYZ", {}, 403),
    ("sha256:" + "b" * 64, {}, 403),
    ("{digest}?offset=%C2%B2", {}, 403),
]


@pytest.mark.parametrize(("path", "headers", "status"), REFUSED)
def test_the_peer_route_refuses_what_a_peer_would_not_send(
    peer_app: Flask, path: str, headers: t.Any, status: int
) -> None:
    digest = _committed(peer_app, b"small blob")
    target = path.format(digest=digest)
    remote = B_ADDRESS
    if headers == "token":
        headers = _token(peer_app, target.split("?")[0])
    elif headers == "other digest":
        headers = _token(peer_app, "sha256:" + "c" * 64)
    elif headers == "token for another holder":
        headers = _token(peer_app, digest, holder="http://10.0.0.3:8000")
    elif headers == "token from another host":
        # A genuine token of host C, sent from B's address.
        headers = _token(peer_app, digest, requester="http://10.0.0.3:8000")
    elif headers == "replayed from elsewhere":
        headers, remote = _token(peer_app, digest), "203.0.113.7"
    elif "Authorization" in headers:
        token = _token(peer_app, digest)["Authorization"].split(" ", 1)[1]
        headers = {"Authorization": headers["Authorization"].format(token=token)}

    response = _get(peer_app, target, headers, remote=remote)

    assert response.status_code == status
    if status == 403:
        assert response.data != b"small blob"


def test_a_416_needs_a_token_for_that_offset(peer_app: Flask) -> None:
    digest = _committed(peer_app, b"small blob")

    response = _get(peer_app, f"{digest}?offset=5000", _token(peer_app, digest, 5000))

    assert response.status_code == 416


def test_a_peer_token_is_good_for_seconds(peer_app: Flask) -> None:
    import time

    digest = _committed(peer_app, b"small blob")
    secret = [peer_app.config["SECRET_KEY"]]

    def issued(seconds_ago: float) -> dict[str, str]:
        tokens = PeerTokens(secret, PEER_B, clock=lambda: time.time() - seconds_ago)
        return {"Authorization": f"Bearer {tokens.issue(PEER_A, digest, 0)}"}

    assert _get(peer_app, digest, issued(1)).status_code == 200
    assert _get(peer_app, digest, issued(20)).status_code == 403


@pytest.fixture
def listener_app(app_factory: t.Callable[..., Flask]) -> Flask:
    """A host that serves the peer route on an internal listener (port 9100) only."""
    return app_factory(
        DEPENDENCY_PROXY_PEER_URL="http://10.0.0.1:9100",
        DEPENDENCY_PROXY_PEER_LISTENER_PORT=9100,
        DEPENDENCY_PROXY_TRUSTED_PROXIES=1,
    )


def test_with_an_internal_listener_the_peer_route_answers_there_only(listener_app: Flask) -> None:
    data = b"small blob"
    digest = _committed(listener_app, data)
    headers = _token(listener_app, digest, holder="http://10.0.0.1:9100")

    internal = _get(listener_app, digest, headers, port=9100)
    public = _get(listener_app, digest, headers, port=8000)
    # What a client says about the port it reached is not believed.
    forwarded = _get(
        listener_app, digest, {**headers, "X-Forwarded-Host": "10.0.0.1:9100"}, port=8000
    )

    assert internal.status_code == 200 and internal.data == data
    assert public.status_code == 404 and forwarded.status_code == 404


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"DEPENDENCY_PROXY_PEER_LISTENER_PORT": 9100}, "PEER_URL"),
        (
            {
                "DEPENDENCY_PROXY_PEER_URL": PEER_A,
                "DEPENDENCY_PROXY_PEER_LISTENER_PORT": "ninety-one",
            },
            "PEER_LISTENER_PORT",
        ),
        (
            {"DEPENDENCY_PROXY_PEER_URL": PEER_A, "DEPENDENCY_PROXY_PEER_LISTENER_PORT": 70000},
            "PEER_LISTENER_PORT",
        ),
    ],
)
def test_a_peer_listener_needs_a_peer_url_and_a_port(
    app_factory: t.Callable[..., Flask], settings: dict[str, t.Any], message: str
) -> None:
    from flask_dependency_proxy.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        app_factory(**settings)


def test_without_a_peer_url_there_is_no_peer_route(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory()
    digest = _committed(app, b"small blob")

    response = _get(app, digest, _token(app, digest))

    assert response.status_code == 404
