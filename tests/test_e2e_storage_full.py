"""The blob store's disk full, through the platform under gunicorn with a real upstream
registry: the store is a 30 MiB tmpfs mounted for the test.

A blob larger than the room left is refused before the response starts (503 with a
registry error that names the storage), leaves no file behind, and does not stop
smaller blobs; a disk that fills up during a transfer breaks that transfer without a
retry upstream. Once there is room again the same pulls work, without a restart.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import typing as t
from pathlib import Path

import pytest

from tests.support import checks, curl, images, seed
from tests.support.clients import Skopeo
from tests.support.faultproxy import FaultProxy, Throttle
from tests.support.platform import Platform
from tests.support.processes import ProcessFactory, wait_for
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

GROUP = seed.ACME
USER = seed.ALICE
STORE_MiB = 30
STORAGE_MESSAGE = "the cache's blob storage is full or not writable"


@pytest.fixture
def store_mount(tmp_path: Path) -> t.Iterator[Path]:
    """A 30 MiB tmpfs where the platform keeps its blob store; always unmounted."""
    mount_point = tmp_path / "platform" / "store"
    mount_point.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={STORE_MiB}m", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
    )
    try:
        yield mount_point
    finally:
        result = subprocess.run(["umount", str(mount_point)], capture_output=True)
        if result.returncode != 0:
            # Still busy (a process that outlived the test): detach it anyway.
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


@pytest.fixture
def faulty(upstream: Registry) -> t.Iterator[FaultProxy]:
    proxy = FaultProxy(upstream.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def live(
    store_mount: Path, live_process: ProcessFactory, tmp_path: Path, faulty: FaultProxy
) -> t.Iterator[Platform]:
    """The platform (two workers, SQLite outside the tmpfs) with its store on the tmpfs."""
    platform = Platform(
        live_process,
        store_mount.parent,
        database_url=f"sqlite:///{tmp_path / 'platform.sqlite3'}",
        upstream_url=faulty.url,
        name="platform-storage",
    )
    assert platform.store_path == store_mount
    seed.seed_minimal(platform)
    platform.start()
    yield platform
    # Stop before the tmpfs is unmounted.
    platform.stop()


def _free(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _fill(store: Path, leave: int, name: str = "filler") -> Path:
    """Take all but ``leave`` bytes of the store's filesystem with one file."""
    filler = store / name
    with open(filler, "wb") as file:
        size = max(_free(store) - leave, 0)
        if size:
            os.posix_fallocate(file.fileno(), 0, size)
    return filler


def _fill_up(store: Path, name: str) -> Path:
    """Take every last byte (a write to the store then fails with ENOSPC)."""
    filler = store / name
    piece = b"\0" * (1024 * 1024)
    with open(filler, "wb", buffering=0) as file:
        try:
            while True:
                file.write(piece)
        except OSError:
            pass
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    file.write(piece[:size])
            except OSError:
                pass
    return filler


def _blob_url(live: Platform, name: str, digest: str) -> str:
    return f"{live.url}/v2/{live.repository(GROUP, name)}/blobs/{digest}"


def _get(live: Platform, name: str, digest: str, workdir: Path, label: str) -> curl.Transfer:
    headers = live.bearer(USER.username, USER.password, GROUP, name)
    return curl.get(_blob_url(live, name, digest), headers, workdir, label)


def _files_of(live: Platform, digest: str) -> list[Path]:
    """Committed and staging files of a digest (lock files are not content)."""
    return [p for p in live.store_files_for(digest) if "locks" not in p.parts]


def _assert_storage_error(transfer: curl.Transfer) -> None:
    assert transfer.complete, transfer
    assert transfer.status == 503, transfer
    assert transfer.error_code == "UNAVAILABLE"
    assert transfer.error_message == STORAGE_MESSAGE


def test_blob_larger_than_the_space_left_is_refused_until_there_is_room(
    live: Platform,
    upstream: Registry,
    skopeo: Skopeo,
    store_mount: Path,
    unique_name: str,
    tmp_path: Path,
) -> None:
    image = images.build_image(f"{unique_name}-seed", layer_sizes=(20 * images.MiB, images.MiB))
    pushed = images.push(image, upstream, f"library/{unique_name}", "latest", workdir=tmp_path)
    big, small = pushed.layer_digests
    filler = _fill(store_mount, leave=8 * images.MiB)
    mark = upstream.mark()

    refused = _get(live, unique_name, big, tmp_path, "big-refused")

    _assert_storage_error(refused)
    assert _files_of(live, big) == []
    log = live.process.log_text()
    assert "blob store cannot take " + big in log
    assert str(store_mount / "staging") in log and "ENOSPC" in log

    # A blob that fits is cached as usual meanwhile.
    fits = _get(live, unique_name, small, tmp_path, "small")
    assert (fits.complete, fits.status) == (True, 200)
    assert images.sha256_digest(fits.body) == small
    # So is the whole image with a real client, but for the big layer.
    checks.ok(skopeo.login(live.host, USER.username, USER.password))
    failed, _ = skopeo.copy_to_dir(live.image(GROUP, unique_name, "latest"))
    output = checks.failed(failed)
    assert "storage is full" in output or "503" in output, output

    # Room again: the same pulls work, no restart needed.
    filler.unlink()
    result, target = skopeo.copy_to_dir(live.image(GROUP, unique_name, "latest"))
    checks.ok(result)
    assert images.sha256_digest((target / big.partition(":")[2]).read_bytes()) == big
    assert [p.parent.name for p in _files_of(live, big)] == [big[7:9]]
    assert not list((store_mount / "staging").iterdir())
    # Upstream announces the size in its answer to the GET: a refused fetch hangs up
    # on it at once, so only the last GET was read to the end.
    gets = [r for r in upstream.access_log(mark) if r.method == "GET" and r.reference == big]
    assert len(gets) == 3  # refused for curl, refused for skopeo, stored
    size = len(image.layers[0].data)
    assert [r.size < size for r in gets] == [True, True, False]


def test_disk_that_fills_up_during_a_transfer_breaks_it_without_retrying_upstream(
    live: Platform,
    upstream: Registry,
    faulty: FaultProxy,
    store_mount: Path,
    unique_name: str,
    tmp_path: Path,
) -> None:
    image = images.build_image(f"{unique_name}-seed", layer_sizes=(12 * images.MiB, 64 * 1024))
    pushed = images.push(image, upstream, f"library/{unique_name}", "latest", workdir=tmp_path)
    big, other = pushed.layer_digests
    faulty.add(Throttle(4 * images.MiB), path="/blobs/")
    staging = store_mount / "staging" / f"sha256-{big[7:]}.partial"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        clients = [
            pool.submit(_get, live, unique_name, big, tmp_path, f"big-{n}") for n in range(2)
        ]
        # Fill the disk once the fetch is under way (it was admitted: there was room).
        wait_for(
            lambda: staging.exists() and staging.stat().st_size > 2 * images.MiB,
            timeout=30,
            what="the fetch to be under way",
        )
        filler = _fill_up(store_mount, "filler")
        transfers = [client.result(timeout=60) for client in clients]

    for transfer in transfers:
        assert not (transfer.complete and transfer.status == 200), transfer
        if transfer.status == 200:
            assert transfer.received < (transfer.content_length or 0)
        else:
            _assert_storage_error(transfer)
    wait_for(lambda: not staging.exists(), timeout=15, what="the staging file to go")
    assert _files_of(live, big) == []
    blob_gets = [r for r in faulty.requests if r.method == "GET" and big in r.path]
    assert len(blob_gets) == 1, "a storage error must not be retried upstream"
    log = live.process.log_text()
    assert "blob store cannot take " + big in log and "ENOSPC" in log

    # Still full (the discarded staging file freed its room: take that too): an
    # uncached blob is refused up front.
    _fill_up(store_mount, "filler-2")
    _assert_storage_error(_get(live, unique_name, other, tmp_path, "other-full"))

    filler.unlink()
    (store_mount / "filler-2").unlink()
    faulty.clear()
    for digest in (big, other):
        transfer = _get(live, unique_name, digest, tmp_path, f"after-{digest[7:15]}")
        assert (transfer.complete, transfer.status) == (True, 200)
        assert images.sha256_digest(transfer.body) == digest
        assert len(_files_of(live, digest)) == 1
