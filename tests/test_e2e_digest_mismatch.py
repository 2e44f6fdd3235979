"""An upstream whose blob bytes do not match their digest, through the platform under
gunicorn (two worker processes) and a second host on the same database and blob store,
pulled with curl, which keeps whatever it receives.

The cache only knows a blob is wrong once it has hashed the last byte, so it holds the
end of every body back until then: a client of a wrong blob always sees a broken
transfer (fewer bytes than ``Content-Length``, or no final chunk), never a complete
``200``, whether it started the fetch or followed it from the same or another process.
A small blob that fails before a byte was sent gets a registry error instead.
"""

from __future__ import annotations

import concurrent.futures
import typing as t
from pathlib import Path

import pytest

from tests.support import curl, images, seed
from tests.support.curl import Transfer
from tests.support.fakeregistry import (
    FakeRegistry,
    Framing,
    ServedBlob,
    corrupt_one_byte,
    sha256_digest,
)
from tests.support.platform import Platform, PlatformFactory
from tests.support.processes import ProcessFactory, wait_for

pytestmark = pytest.mark.e2e

#: The subject is bytes that do not match their digest, not the database: PostgreSQL, the production
#: setup, only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

GROUP = seed.ACME
USER = seed.ALICE
#: Rounds of one client, then rounds of several concurrent clients, per scenario.
SINGLE_ROUNDS = 3
CONCURRENT_ROUNDS = 3
CONCURRENT_CLIENTS = 4


@pytest.fixture(scope="module")
def fake() -> t.Iterator[FakeRegistry]:
    registry = FakeRegistry().start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def live(module_platform_factory: PlatformFactory, fake: FakeRegistry) -> Platform:
    return module_platform_factory(fake.url, name="mismatch")


@pytest.fixture(scope="module")
def second_host(module_processes: ProcessFactory, live: Platform) -> Platform:
    """Another gunicorn on ``live``'s database and blob store: its clients follow a
    fetch that ``live`` runs (and the other way round) through the staging file."""
    return live.sibling(module_processes, "platform-mismatch-second-host").start()


def _serve_image(
    fake: FakeRegistry, name: str, layer_size: int, blob: t.Callable[[bytes], ServedBlob]
) -> tuple[str, bytes]:
    """Publish an image whose one layer is served as ``blob(layer bytes)``; returns the
    layer's digest and its true bytes."""
    image = images.build_image(f"{name}-seed", layer_sizes=(layer_size,))
    repository = f"library/{name}"
    fake.add_manifest(repository, "latest", image.media_type, image.manifest)
    fake.add_blob(repository, image.config.digest, ServedBlob(image.config.data))
    layer = image.layers[0]
    fake.add_blob(repository, layer.digest, blob(layer.data))
    return layer.digest, layer.data


def _curl(
    host: Platform, name: str, digest: str, workdir: Path, number: int, headers: dict[str, str]
) -> Transfer:
    url = f"{host.url}/v2/{host.repository(GROUP, name)}/blobs/{digest}"
    return curl.get(url, headers, workdir, f"client-{number}")


def _pull_rounds(
    hosts: t.Sequence[Platform], name: str, digest: str, workdir: Path
) -> list[Transfer]:
    """One client at a time, then several at once, taking turns over ``hosts``."""
    headers = hosts[0].bearer(USER.username, USER.password, GROUP, name)

    def pull(number: int) -> Transfer:
        return _curl(hosts[number % len(hosts)], name, digest, workdir, number, headers)

    transfers = [pull(n) for n in range(SINGLE_ROUNDS)]
    with concurrent.futures.ThreadPoolExecutor(CONCURRENT_CLIENTS) as pool:
        for round_ in range(CONCURRENT_ROUNDS):
            numbers = range(100 * (round_ + 1), 100 * (round_ + 1) + CONCURRENT_CLIENTS)
            transfers += pool.map(pull, numbers)
    return transfers


def _committed(live: Platform, digest: str) -> list[Path]:
    return [p for p in live.store_files_for(digest) if "blobs" in p.parts]


def _assert_never_complete(transfers: list[Transfer], digest: str) -> None:
    complete = [tr for tr in transfers if tr.complete and tr.status == 200]
    assert complete == [], f"{len(complete)} of {len(transfers)} clients got a complete 200"
    for transfer in transfers:
        assert sha256_digest(transfer.body) != digest
        if transfer.status == 200 and transfer.content_length is not None:
            assert transfer.received < transfer.content_length
        elif transfer.status != 200:
            assert transfer.complete
            assert (transfer.status, transfer.error_code) == (503, "UNAVAILABLE")


SCENARIOS = {
    "large-full-speed": (6 * images.MiB, None),
    "large-throttled": (6 * images.MiB, 6 * images.MiB),
    "small-full-speed": (40 * 1024, None),
    "small-throttled": (40 * 1024, 200 * 1024),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_blob_with_one_flipped_byte_never_reaches_a_client_complete(
    live: Platform,
    second_host: Platform,
    fake: FakeRegistry,
    unique_name: str,
    tmp_path: Path,
    scenario: str,
) -> None:
    size, rate = SCENARIOS[scenario]
    live.process.mark_log()
    second_host.process.mark_log()
    digest, _data = _serve_image(
        fake,
        unique_name,
        size,
        lambda data: ServedBlob(corrupt_one_byte(data), bytes_per_second=rate),
    )

    transfers = _pull_rounds([live, second_host], unique_name, digest, tmp_path)

    _assert_never_complete(transfers, digest)
    if size < 1024 * 1024:
        # Nothing of a small blob is sent before its hash is known: a registry error.
        assert {(tr.status, tr.error_code) for tr in transfers} == {(503, "UNAVAILABLE")}
    assert _committed(live, digest) == []
    followed = sum(
        host.process.log_text(host.process.log_mark).count(
            f"fetch of {digest} in another process failed"
        )
        for host in (live, second_host)
    )
    print(f"{scenario}: {len(transfers)} clients, {followed} followed from another process")
    if scenario == "large-throttled":
        # The fetch lasts about a second and each concurrent round starts clients on
        # both hosts at once: those on the host that did not fetch followed the other's
        # fetch through the staging file.
        assert followed > 0


def test_chunked_blob_without_length_is_held_back_too(
    live: Platform, fake: FakeRegistry, unique_name: str, tmp_path: Path
) -> None:
    digest, _data = _serve_image(
        fake,
        unique_name,
        3 * images.MiB,
        lambda data: ServedBlob(
            corrupt_one_byte(data), framing=Framing.CHUNKED, bytes_per_second=12 * images.MiB
        ),
    )

    transfers = _pull_rounds([live], unique_name, digest, tmp_path)

    _assert_never_complete(transfers, digest)
    assert _committed(live, digest) == []


def test_bytes_beyond_the_announced_length_abort_the_fetch(
    live: Platform, fake: FakeRegistry, unique_name: str, tmp_path: Path
) -> None:
    """Upstream announces the blob's true length but sends (chunked) the true bytes and
    32 MiB more: the fetch stops at the first byte too many instead of storing them."""
    extra = 32 * images.MiB
    digest, data = _serve_image(
        fake,
        unique_name,
        2 * images.MiB,
        lambda data: ServedBlob(
            data + b"\0" * extra, framing=Framing.CHUNKED_WITH_LENGTH, announced=len(data)
        ),
    )
    tmp_path.mkdir(exist_ok=True)

    headers = live.bearer(USER.username, USER.password, GROUP, unique_name)
    transfer = _curl(live, unique_name, digest, tmp_path, 0, headers)

    _assert_never_complete([transfer], digest)
    if transfer.status == 200:
        assert transfer.content_length == len(data)
    assert _committed(live, digest) == []
    wait_for(lambda: fake.blob_gets(digest), timeout=30, what="the upstream GET to end")
    gets = fake.blob_gets(digest)
    assert len(gets) == 1
    # The cache hung up after the announced length: far from all of the extra bytes
    # left the fake (what did is what the sockets' buffers took).
    assert gets[0].sent < len(data) + extra // 2
