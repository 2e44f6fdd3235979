"""``Range`` on the blob route, in process: ``Accept-Ranges`` on blob answers, ``206``
from a miss while its fetch runs (read from the range's first byte, never from the
blob's), ``416`` with the size once it is known, and a ranged answer whose fetch breaks
cut short like a whole one.

The example platform answers through its real view, token and access checks; the cache's
``get_blob`` hands back a committed blob of the app's store, or a miss whose fetch is a
stream the test controls."""

from __future__ import annotations

import hashlib
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_dependency_proxy._state import state
from flask_dependency_proxy.cache.results import BlobResult, Outcome
from flask_dependency_proxy.fetch.errors import FetchFailed
from flask_dependency_proxy.stores.base import ByteStream, Following
from tests.platform_fixtures import build_world, dispose, make_app

# Ranges, not the database, are the subject: SQLite is enough here.
UNWANTED_COMBINATIONS = [{"database_backend": "postgresql"}]

DATA = bytes(range(256)) * 40 + b"end"
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
REPOSITORY = "org/team/dependency_proxy/containers/alpine"
URL = f"/v2/{REPOSITORY}/blobs/{DIGEST}"


class Registry(t.NamedTuple):
    app: Flask
    headers: dict[str, str]


@pytest.fixture
def registry(fresh_database_url: str, tmp_path: Path) -> t.Iterator[Registry]:
    app = make_app(tmp_path, fresh_database_url)
    with app.app_context():
        password = build_world().passwords["dev"]
    runner = app.test_cli_runner()
    assert runner.invoke(args=["dependency-proxy", "enable", "org/team"]).exit_code == 0
    token = (
        app.test_client()
        .get(
            "/jwt/auth",
            query_string={"service": "dependency_proxy", "scope": f"repository:{REPOSITORY}:pull"},
            auth=("dev", password),
        )
        .get_json()["token"]
    )
    yield Registry(app, {"Authorization": f"Bearer {token}"})
    dispose(app)


@pytest.fixture
def cached(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The blob committed to the app's store and held by the group."""
    proxy = state(registry.app)
    staged = proxy.store.stage(DIGEST, len(DATA))
    staged.write(DATA)
    staged.commit()
    monkeypatch.setattr(
        proxy.cache, "get_blob", lambda *a, **k: proxy.cache._stored(DIGEST, len(DATA))
    )
    monkeypatch.setattr(proxy.cache, "head_blob", lambda *a, **k: len(DATA))
    return registry


class Miss:
    """A miss whose fetch yields ``DATA`` in 1000-byte pieces, failing after ``fail_after``
    bytes when set; remembers the offsets it was read from."""

    def __init__(self, *, size: int | None = len(DATA), fail_after: int | None = None) -> None:
        self.size = size
        self.fail_after = fail_after
        self.starts: list[int] = []

    def read_from(self, start: int) -> t.Iterator[bytes]:
        self.starts.append(start)
        for first in range(start, len(DATA), 1000):
            if self.fail_after is not None and first >= self.fail_after:
                raise FetchFailed("upstream broke off")
            yield DATA[first : first + 1000]

    def result(self) -> BlobResult:
        return BlobResult(
            digest=DIGEST,
            size=self.size,
            location=Following(self.size, self.read_from),
            outcome=Outcome.MISS,
        )


def _missing(registry: Registry, monkeypatch: pytest.MonkeyPatch, miss: Miss) -> Miss:
    monkeypatch.setattr(state(registry.app).cache, "get_blob", lambda *a, **k: miss.result())
    return miss


# -- a cached blob ---------------------------------------------------------------------


def test_cached_blob_answers_say_they_take_ranges(cached: Registry) -> None:
    client = cached.app.test_client()
    head = client.head(URL, headers=cached.headers)
    whole = client.get(URL, headers=cached.headers)
    ranged = client.get(URL, headers={**cached.headers, "Range": "bytes=10-19"})

    assert (head.status_code, whole.status_code, ranged.status_code) == (200, 200, 206)
    assert [r.headers.get("Accept-Ranges") for r in (head, whole, ranged)] == ["bytes"] * 3
    assert head.headers["Content-Length"] == str(len(DATA))
    assert ranged.data == DATA[10:20]
    assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"


@pytest.mark.parametrize("header", [f"bytes={len(DATA)}-", "bytes=0-1,5-6", "bytes=9-2"])
def test_a_range_a_cached_blob_cannot_answer_is_416_with_its_size(
    cached: Registry, header: str
) -> None:
    response = cached.app.test_client().get(URL, headers={**cached.headers, "Range": header})

    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert response.get_json()["errors"][0]["code"] == "RANGE_INVALID"


def test_a_range_is_ignored_when_if_range_names_another_blob(cached: Registry) -> None:
    headers = {**cached.headers, "Range": "bytes=10-", "If-Range": '"sha256:' + "0" * 64 + '"'}
    response = cached.app.test_client().get(URL, headers=headers)

    assert response.status_code == 200
    assert response.data == DATA


def test_a_range_of_a_blob_streamed_from_the_object_store(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamed by the proxy (an object store clients cannot reach), not redirected."""
    stored = ByteStream(
        len(DATA), open=lambda: iter([DATA[n : n + 1000] for n in range(0, len(DATA), 1000)])
    )
    result = BlobResult(digest=DIGEST, size=len(DATA), location=stored)
    monkeypatch.setattr(state(registry.app).cache, "get_blob", lambda *a, **k: result)
    client = registry.app.test_client()
    ranged = client.get(URL, headers={**registry.headers, "Range": "bytes=1500-2600"})
    past = client.get(URL, headers={**registry.headers, "Range": f"bytes={len(DATA)}-"})

    assert ranged.status_code == 206
    assert ranged.data == DATA[1500:2601]
    assert ranged.headers["Content-Range"] == f"bytes 1500-2600/{len(DATA)}"
    assert ranged.headers["Accept-Ranges"] == "bytes"
    assert past.status_code == 416
    assert past.headers["Content-Range"] == f"bytes */{len(DATA)}"


# -- a miss --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=2500-", 2500, len(DATA)),
        ("bytes=100-5099", 100, 5100),
        ("bytes=-3", len(DATA) - 3, len(DATA)),
    ],
)
def test_a_range_of_a_miss_is_answered_from_its_fetch(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, header: str, start: int, stop: int
) -> None:
    miss = _missing(registry, monkeypatch, Miss())
    response = registry.app.test_client().get(URL, headers={**registry.headers, "Range": header})

    assert response.status_code == 206
    assert response.data == DATA[start:stop]
    assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(DATA)}"
    assert response.headers["Content-Length"] == str(stop - start)
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Docker-Content-Digest"] == DIGEST
    # The fetch is followed from the range's first byte, not read from the blob's.
    assert miss.starts == [start]


def test_a_whole_miss_says_it_takes_ranges(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _missing(registry, monkeypatch, Miss())
    response = registry.app.test_client().get(URL, headers=registry.headers)

    assert response.status_code == 200
    assert response.data == DATA
    assert response.headers["Accept-Ranges"] == "bytes"


def test_a_range_past_a_miss_s_size_is_416(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    miss = _missing(registry, monkeypatch, Miss())
    response = registry.app.test_client().get(
        URL, headers={**registry.headers, "Range": f"bytes={len(DATA) + 10}-"}
    )

    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert response.get_json()["errors"][0]["code"] == "RANGE_INVALID"
    assert miss.starts == []


def test_a_miss_of_unknown_size_is_answered_whole(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _missing(registry, monkeypatch, Miss(size=None))
    response = registry.app.test_client().get(
        URL, headers={**registry.headers, "Range": "bytes=10-"}
    )

    assert response.status_code == 200
    assert response.data == DATA
    assert "Content-Range" not in response.headers


def test_a_ranged_miss_whose_fetch_breaks_is_cut_short(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _missing(registry, monkeypatch, Miss(fail_after=6000))
    response = registry.app.test_client().get(
        URL, headers={**registry.headers, "Range": "bytes=2000-"}, buffered=False
    )
    assert response.status_code == 206
    assert response.headers["Content-Length"] == str(len(DATA) - 2000)

    received = bytearray()
    with pytest.raises(FetchFailed):
        for chunk in response.response:
            received += t.cast(bytes, chunk)
    assert len(received) < len(DATA) - 2000
    assert bytes(received) == DATA[2000 : 2000 + len(received)]
