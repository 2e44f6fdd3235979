"""The object-storage blob store against a real SeaweedFS: objects appear under their
final key only when a verified blob is committed, multipart uploads never outlive a
fetch, and cleanup's set-aside/restore/delete map onto copies and deletes."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import os
import threading
import time
import typing as t
from pathlib import Path

import botocore.exceptions
import pytest
import requests
from botocore.config import Config
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from examples.platform.host import PlatformHost
from flask_dependency_proxy import ConfigError, DependencyProxy, state
from flask_dependency_proxy.stores.base import ByteStream, Redirect, StorageError
from flask_dependency_proxy.stores.s3 import S3Store
from tests.support.processes import free_port
from tests.support.seaweedfs import SeaweedFS

#: S3's smallest part, so a few MiB make several parts.
PART = 5 * 1024 * 1024


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.new_bucket()


@pytest.fixture
def store(seaweedfs: SeaweedFS, bucket: str, tmp_path: Path) -> S3Store:
    return S3Store(
        seaweedfs.client,
        bucket,
        "cache",
        str(tmp_path / "local"),
        endpoint_url=seaweedfs.endpoint,
        part_bytes=PART,
    )


def _write(staged: t.Any, data: bytes, chunk: int = 256 * 1024) -> None:
    for start in range(0, len(data), chunk):
        staged.write(data[start : start + chunk])


def _committed(store: S3Store, data: bytes) -> str:
    """Stage, write and commit ``data``; its digest."""
    digest = _digest(data)
    staged = store.stage(digest, len(data))
    _write(staged, data)
    staged.commit()
    return digest


def _wait_for_parts(seaweedfs: SeaweedFS, bucket: str, key: str, count: int) -> None:
    from tests.support.processes import wait_for

    def uploaded() -> bool:
        for upload in seaweedfs.multipart_uploads(bucket):
            if upload["Key"] == key:
                parts = seaweedfs.client.list_parts(
                    Bucket=bucket, Key=key, UploadId=upload["UploadId"]
                )
                return len(parts.get("Parts", [])) >= count
        return False

    wait_for(uploaded, timeout=20, what=f"{count} parts of {key} uploaded")


def test_small_blob_is_one_object_that_appears_only_at_commit(
    store: S3Store, seaweedfs: SeaweedFS, bucket: str
) -> None:
    data = os.urandom(100_000)
    digest = _digest(data)
    staged = store.stage(digest, len(data))
    _write(staged, data)
    assert Path(staged.spool_path).read_bytes() == data
    assert seaweedfs.objects(bucket) == []
    assert store.size(digest) is None
    staged.commit()
    assert seaweedfs.objects(bucket) == [store.key(digest)]
    assert store.key(digest) == f"cache/blobs/sha256/{digest[7:9]}/{digest[7:]}"
    assert store.size(digest) == len(data)
    assert not os.path.exists(staged.spool_path)
    with store.open(digest) as body:
        assert body.read() == data
    assert seaweedfs.multipart_uploads(bucket) == []


def test_large_blob_uploads_parts_while_it_arrives_and_completes_at_commit(
    store: S3Store, seaweedfs: SeaweedFS, bucket: str
) -> None:
    data = os.urandom(3 * PART + 12345)
    digest = _digest(data)
    staged = store.stage(digest, len(data))
    _write(staged, data[: 2 * PART + 1])
    # Two parts went up before the fetch ended; the object is not visible yet.
    _wait_for_parts(seaweedfs, bucket, store.key(digest), 2)
    assert seaweedfs.objects(bucket) == []
    _write(staged, data[2 * PART + 1 :])
    staged.commit()
    assert seaweedfs.objects(bucket) == [store.key(digest)]
    assert seaweedfs.multipart_uploads(bucket) == []
    with store.open(digest) as body:
        assert hashlib.sha256(body.read()).hexdigest() == digest[7:]


def test_blob_of_whole_parts_completes_without_an_empty_part(
    store: S3Store, seaweedfs: SeaweedFS, bucket: str
) -> None:
    data = os.urandom(2 * PART)
    digest = _committed(store, data)
    answer = seaweedfs.client.head_object(Bucket=bucket, Key=store.key(digest), PartNumber=1)
    assert answer.get("PartsCount") in (None, 2)
    with store.open(digest) as body:
        assert body.read() == data


def test_without_upload_nothing_goes_up_before_commit(
    store: S3Store, seaweedfs: SeaweedFS, bucket: str
) -> None:
    data = os.urandom(2 * PART + 7)
    digest = _digest(data)
    staged = store.stage(digest, len(data), upload=False)
    _write(staged, data)
    assert seaweedfs.multipart_uploads(bucket) == []
    staged.commit()
    assert store.size(digest) == len(data)
    assert seaweedfs.multipart_uploads(bucket) == []


def test_discard_aborts_the_upload_and_removes_the_spool_file(
    store: S3Store, seaweedfs: SeaweedFS, bucket: str
) -> None:
    data = os.urandom(2 * PART + 99)
    digest = _digest(data)
    staged = store.stage(digest, len(data))
    _write(staged, data)
    _wait_for_parts(seaweedfs, bucket, store.key(digest), 1)
    staged.discard()
    staged.discard()
    assert seaweedfs.multipart_uploads(bucket) == []
    assert seaweedfs.objects(bucket) == []
    assert not os.path.exists(staged.spool_path)


def test_restart_starts_the_upload_over(store: S3Store, seaweedfs: SeaweedFS, bucket: str) -> None:
    data = os.urandom(2 * PART + 5)
    digest = _digest(data)
    staged = store.stage(digest, len(data))
    _write(staged, os.urandom(PART + 10))
    _wait_for_parts(seaweedfs, bucket, store.key(digest), 1)
    staged.restart()
    assert seaweedfs.multipart_uploads(bucket) == []
    assert Path(staged.spool_path).stat().st_size == 0
    _write(staged, data)
    staged.commit()
    with store.open(digest) as body:
        assert body.read() == data


def test_part_size_keeps_uploads_under_ten_thousand_parts(store: S3Store) -> None:
    assert store.part_size(1) == PART
    size = 200 * 1024**3
    assert size / store.part_size(size) < 10_000
    assert store.part_size(size) % (1024 * 1024) == 0


def test_hits_are_presigned_redirects_or_streams(
    store: S3Store, seaweedfs: SeaweedFS, bucket: str
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    digest = _committed(store, data)
    location = store.locate(digest, len(data))
    assert isinstance(location, Redirect)
    assert requests.get(location.url, timeout=10).content == data
    store.redirect = False
    streamed = store.locate(digest, len(data))
    assert isinstance(streamed, ByteStream)
    chunks = list(streamed.open())
    assert b"".join(chunks) == data
    assert max(len(chunk) for chunk in chunks) <= 1024 * 1024
    store.delete(digest)
    with pytest.raises(FileNotFoundError):
        streamed.open()


def test_redirected_hits_check_an_object_once_per_verify_window(
    seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    """A redirect cannot see the client's 404: a ``HEAD`` checks the object, at most
    once per window, so an object deleted behind the cache's back is noticed. The commit
    that wrote the object counts as a check."""
    store = S3Store(seaweedfs.client, bucket, "cache", str(tmp_path / "local"), verify_seconds=0.5)
    data = os.urandom(1000)
    heads: list[str] = []

    def count(**_: t.Any) -> None:
        heads.append("HEAD")

    events = seaweedfs.client.meta.events
    events.register("before-call.s3.HeadObject", count)
    try:
        digest = _committed(store, data)
        assert [store.recorded_size(digest, len(data)) for _ in range(3)] == [len(data)] * 3
        assert heads == []
        time.sleep(0.6)
        assert [store.recorded_size(digest, len(data)) for _ in range(3)] == [len(data)] * 3
        assert len(heads) == 1
        seaweedfs.client.delete_object(Bucket=bucket, Key=store.key(digest))
        assert store.recorded_size(digest, len(data)) == len(data)  # within the window
        time.sleep(0.6)
        assert store.recorded_size(digest, len(data)) is None
        assert len(heads) == 2
        store.redirect = False  # a streamed hit trusts the row: opening the object tells
        assert store.recorded_size(digest, len(data)) == len(data)
        assert len(heads) == 2
    finally:
        events.unregister("before-call.s3.HeadObject", count)


def test_a_herd_of_redirected_hits_shares_one_check(
    seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    """Twelve hits on a blob that this process has not checked yet arrive together: one
    ``HEAD`` answers them all (each ``HEAD`` takes a fifth of a second here)."""
    data = os.urandom(1000)
    digest = _committed(S3Store(seaweedfs.client, bucket, "cache", str(tmp_path / "a")), data)
    store = S3Store(seaweedfs.client, bucket, "cache", str(tmp_path / "b"))
    heads: list[str] = []

    def slow(**_: t.Any) -> None:
        heads.append("HEAD")
        time.sleep(0.2)

    events = seaweedfs.client.meta.events
    events.register("before-call.s3.HeadObject", slow)
    start = threading.Barrier(12)
    try:

        def hit() -> int | None:
            start.wait(5)
            return store.recorded_size(digest, len(data))

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            sizes = list(pool.map(lambda _: hit(), range(12)))
    finally:
        events.unregister("before-call.s3.HeadObject", slow)
    assert sizes == [len(data)] * 12
    assert len(heads) <= 2  # twelve before; a thread held up by the machine may ask again


def test_redirected_hits_check_every_time_with_a_zero_window(
    seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    store = S3Store(seaweedfs.client, bucket, "", str(tmp_path / "local"), verify_seconds=0)
    data = os.urandom(10)
    digest = _committed(store, data)
    assert store.recorded_size(digest, len(data)) == len(data)
    seaweedfs.client.delete_object(Bucket=bucket, Key=store.key(digest))
    assert store.recorded_size(digest, len(data)) is None


def test_cleanup_sets_aside_restores_and_deletes(
    store: S3Store, seaweedfs: SeaweedFS, bucket: str
) -> None:
    blobs = {}
    for _ in range(2):
        data = os.urandom(1000)
        blobs[_committed(store, data)] = data
    first, second = sorted(blobs)
    assert sorted(digest for digest, _ in store.committed()) == [first, second]
    assert store.usage() == (2, 2000)

    stamp = dt.datetime(2026, 12, 1, 12, 0, 0)
    assert store.set_aside(first, stamp)
    assert not store.set_aside(first, stamp)
    assert store.size(first) is None
    ((digest, when, handle),) = list(store.set_aside_blobs())
    assert (digest, when) == (first, stamp)
    assert handle.startswith("cache/trash/")
    assert store.restore(first, handle)
    assert store.size(first) == 1000
    assert list(store.set_aside_blobs()) == []

    store.set_aside(second, stamp)
    ((_, _, handle),) = list(store.set_aside_blobs())
    assert store.delete_set_aside(handle) == 1000
    assert store.delete_set_aside(handle) is None
    assert seaweedfs.objects(bucket) == [store.key(first)]
    with pytest.raises(ValueError):
        store.delete_set_aside("cache/blobs/sha256/ab/" + "ab" * 32)


def test_restore_keeps_a_copy_committed_meanwhile(store: S3Store) -> None:
    data = os.urandom(500)
    digest = _digest(data)
    for _ in range(2):
        _committed(store, data)
        store.set_aside(digest, dt.datetime(2026, 12, 1))
    _committed(store, data)
    ((_, _, handle),) = list(store.set_aside_blobs())
    assert not store.restore(digest, handle)
    assert list(store.set_aside_blobs()) == []
    assert store.size(digest) == 500


def test_stale_uploads_and_spool_files_are_removed(
    store: S3Store, seaweedfs: SeaweedFS, bucket: str
) -> None:
    data = os.urandom(PART + 1)
    digest = _digest(data)
    staged = store.stage(digest, len(data))
    _write(staged, data)
    _wait_for_parts(seaweedfs, bucket, store.key(digest), 1)
    # What a killed fetch leaves: its upload and its spool file.
    staged._stop_uploaders(drain=False)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert store.remove_stale_staging(now - dt.timedelta(hours=1)) == 0
    assert len(seaweedfs.multipart_uploads(bucket)) == 1
    assert store.remove_stale_staging(now + dt.timedelta(minutes=1)) == 2
    assert seaweedfs.multipart_uploads(bucket) == []
    assert not os.path.exists(staged.spool_path)


def test_a_store_that_is_down_raises_storage_errors(tmp_path: Path) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    store = S3Store(client, "down", "", str(tmp_path / "local"))
    digest = _digest(b"x")
    with pytest.raises(StorageError) as info:
        store.size(digest)
    assert info.value.path == store.key(digest)
    with pytest.raises(StorageError):
        store.open(digest)
    with pytest.raises(StorageError):
        list(store.committed())
    staged = store.stage(digest, 1)
    staged.write(b"x")
    with pytest.raises(StorageError) as info:
        staged.commit()
    assert info.value.path == store.key(digest)
    staged.discard()


def _app(tmp_path: Path, **config: t.Any) -> tuple[Flask, SQLAlchemy]:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        SECRET_KEY="k", SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/db.sqlite", **config
    )
    db = SQLAlchemy()
    db.init_app(app)
    return app, db


@pytest.mark.parametrize(
    "url",
    [
        "http://bucket/prefix",
        "s3://",
        "s3://UPPER",
        "s3://bucket/../escape",
        "s3://bucket/pre fix",
        "s3://bucket/prefix?x=1",
    ],
)
def test_bad_storage_urls_fail_at_init_app(tmp_path: Path, url: str) -> None:
    app, db = _app(tmp_path, DEPENDENCY_PROXY_STORAGE_URL=url)
    with pytest.raises(ConfigError, match="DEPENDENCY_PROXY_STORAGE_URL"):
        DependencyProxy(app, db=db, host=PlatformHost())


def test_storage_url_opens_the_object_store(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in seaweedfs.env(bucket).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    app, db = _app(
        tmp_path,
        DEPENDENCY_PROXY_STORAGE_URL=f"s3://{bucket}/some/prefix/",
        DEPENDENCY_PROXY_S3_ENDPOINT_URL=seaweedfs.endpoint,
        DEPENDENCY_PROXY_S3_REGION="us-east-1",
        DEPENDENCY_PROXY_S3_ADDRESSING_STYLE="path",
        DEPENDENCY_PROXY_STORAGE_PATH=str(tmp_path / "local"),
    )
    DependencyProxy(app, db=db, host=PlatformHost())
    store = state(app).store
    assert isinstance(store, S3Store)
    assert store.describe() == f"s3://{bucket}/some/prefix/ (endpoint {seaweedfs.endpoint})"
    assert seaweedfs.secret_key not in store.describe()
    data = b"through the configured client"
    _committed(store, data)
    assert seaweedfs.objects(bucket) == [store.key(_digest(data))]
    assert store.key(_digest(data)).startswith("some/prefix/blobs/")


def _configured_store(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> S3Store:
    """The store ``init_app`` opens on ``bucket``, with S3's smallest parts."""
    for key, value in seaweedfs.env(bucket).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    app, db = _app(
        tmp_path,
        DEPENDENCY_PROXY_STORAGE_URL=f"s3://{bucket}",
        DEPENDENCY_PROXY_S3_ENDPOINT_URL=seaweedfs.endpoint,
        DEPENDENCY_PROXY_S3_REGION="us-east-1",
        DEPENDENCY_PROXY_S3_ADDRESSING_STYLE="path",
        DEPENDENCY_PROXY_STORAGE_PATH=str(tmp_path / "local"),
    )
    DependencyProxy(app, db=db, host=PlatformHost())
    store = state(app).store
    assert isinstance(store, S3Store)
    store.part_bytes = PART
    return store


def _record_bodies(store: S3Store) -> list[dict[str, t.Any]]:
    """The operation and checksum headers of every body the store's client sends."""
    sent: list[dict[str, t.Any]] = []

    def record(request: t.Any, event_name: str, **_: t.Any) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        sent.append(
            {
                "operation": event_name.split(".")[-1],
                "payload": headers.get("x-amz-content-sha256"),
                "crc32": headers.get("x-amz-checksum-crc32"),
                "md5": headers.get("content-md5"),
            }
        )

    for operation in ("UploadPart", "PutObject"):
        store.client.meta.events.register(f"before-send.s3.{operation}", record)
    return sent


def test_configured_client_sends_bodies_with_a_crc32_the_store_checks(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bodies go up unsigned by SigV4 (whose hash would run on gevent's event loop) but
    with a CRC32 computed off it, because SeaweedFS verifies that header: the probe's
    wrong one was refused, and so is a wrong one on a part."""
    store = _configured_store(tmp_path, seaweedfs, bucket, monkeypatch)
    sent = _record_bodies(store)
    large, small = os.urandom(2 * PART + 100), os.urandom(1000)
    for data in (large, small):
        _committed(store, data)
        with store.open(_digest(data)) as body:
            assert body.read() == data
    assert store.body_check("any") == "CRC32"
    # The probe, then three parts and one small blob.
    assert [body["operation"] for body in sent] == ["PutObject"] + ["UploadPart"] * 3 + [
        "PutObject"
    ]
    assert {body["payload"] for body in sent} == {b"UNSIGNED-PAYLOAD"}
    assert all(body["crc32"] and not body["md5"] for body in sent)
    # The object store kept the parts' checksums: the object has a composite CRC32.
    head = seaweedfs.client.head_object(
        Bucket=bucket, Key=store.key(_digest(large)), ChecksumMode="ENABLED"
    )
    assert head["ChecksumCRC32"].endswith("-3")
    assert seaweedfs.objects(bucket) == sorted(store.key(_digest(d)) for d in (large, small))
    upload = seaweedfs.client.create_multipart_upload(
        Bucket=bucket, Key="wrong", ChecksumAlgorithm="CRC32"
    )
    with pytest.raises(botocore.exceptions.ClientError, match="BadDigest"):
        seaweedfs.client.upload_part(
            Bucket=bucket,
            Key="wrong",
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=b"one",
            ChecksumCRC32="AAAAAA==",
        )


class _IgnoresCrc32:
    """A client whose store takes ``x-amz-checksum-crc32`` without checking it (the
    header is dropped on its way to SeaweedFS)."""

    def __init__(self, client: t.Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._client, name)

    def put_object(self, **params: t.Any) -> t.Any:
        params.pop("ChecksumCRC32", None)
        return self._client.put_object(**params)


class _RefusesCrc32(_IgnoresCrc32):
    """A client whose store refuses the header itself, as stores that do not know it do."""

    def put_object(self, **params: t.Any) -> t.Any:
        if "ChecksumCRC32" in params:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "InvalidArgument", "Message": "Unsupported header"}},
                "PutObject",
            )
        return self._client.put_object(**params)


@pytest.mark.parametrize("client_class", [_IgnoresCrc32, _RefusesCrc32])
def test_a_store_that_does_not_verify_crc32_gets_a_content_md5(
    tmp_path: Path,
    seaweedfs: SeaweedFS,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    client_class: type[_IgnoresCrc32],
) -> None:
    """A store that ignores or refuses the CRC32 header gets every body with a
    ``Content-MD5``, and the probe leaves no object behind."""
    store = _configured_store(tmp_path, seaweedfs, bucket, monkeypatch)
    sent = _record_bodies(store)
    store.client = client_class(store.client)
    data = os.urandom(PART + 100)
    _committed(store, data)
    with store.open(_digest(data)) as body:
        assert body.read() == data
    assert store.body_check("any") == "MD5"
    parts = [body for body in sent if body["operation"] == "UploadPart"]
    assert len(parts) == 2
    assert all(body["md5"] and not body["crc32"] for body in parts)
    assert seaweedfs.objects(bucket) == [store.key(_digest(data))]
