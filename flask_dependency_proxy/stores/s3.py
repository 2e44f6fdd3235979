"""The object-storage blob store (:class:`~.base.StoreBackend`): S3 and compatible
servers (MinIO, SeaweedFS, Ceph, GCS's S3 API) through boto3.

Knows objects, keys and digests; nothing of the database, the upstream or HTTP.
Credentials come only from boto3's own chain (environment, shared files, instance or
container roles), never from the application's configuration.

Keys below the prefix of ``STORAGE_URL``:

- ``blobs/<algorithm>/<2 hex>/<hex>``: committed blobs. An object appears there only
  once its digest was verified.
- ``trash/<algorithm>-<hex>.<epoch ms>``: blobs cleanup set aside for the grace period.
- ``probes/crc32-<uuid>``: what a store that ignores ``x-amz-checksum-crc32`` accepted
  while :meth:`S3Store.body_check` found that out, deleted right away.

A blob being fetched is uploaded while it arrives and appears under its key, atomically,
when its digest is verified (:mod:`.s3_upload`). Cleanup's set-aside, restore and sweep
of what killed fetches left are in :mod:`.s3_janitor`.

A hit asks the store almost nothing before it is answered: the database knows the
blob's size and a presigned URL is signed locally. An object gone from under its row (a
pull racing cleanup's set-aside, or a delete behind the cache's back) shows when a
streamed hit opens it (its ``GetObject`` is its first request), and the request's retry
fetches it again. A redirected hit cannot see what the client gets, so a worker checks
each object with a ``HEAD`` at most once per ``S3_VERIFY_SECONDS`` (committing it counts
as a check): a missing object
fails clients for at most that long, and the next hit fetches the blob again.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import typing as t

# boto3 ships no type information.
import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from ..config import ProxyConfig
from ..single_flight import SingleFlight
from .base import ByteStream, Redirect, StorageError
from .s3_errors import is_missing, storage_error
from .s3_janitor import S3Janitor
from .s3_upload import MIN_PART_BYTES, StagedObject, part_size, probe_body_check
from .spool import Spool

#: Bytes per chunk of a blob the proxy streams itself.
_STREAM_CHUNK = 1024 * 1024


class S3Store:
    """Blobs in ``bucket`` below ``prefix``; spool and lock files under ``local_root``.

    :param client: a boto3 S3 client (thread-safe; one per store).
    :param prefix: ``""`` or a key prefix without a trailing ``/``.
    :param redirect: answer hits with a presigned URL instead of streaming them.
    :param presign_seconds: lifetime of a presigned URL.
    :param part_bytes: smallest multipart part (tests use S3's minimum).
    """

    def __init__(
        self,
        client: t.Any,
        bucket: str,
        prefix: str,
        local_root: str,
        *,
        endpoint_url: str | None = None,
        redirect: bool = True,
        presign_seconds: int = 900,
        verify_seconds: float = 300.0,
        part_bytes: int = MIN_PART_BYTES,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self.redirect = redirect
        self.presign_seconds = presign_seconds
        #: Objects a ``HEAD`` found, trusted for ``verify_seconds`` by redirected hits.
        self._verified = _RecentlySeen(verify_seconds)
        #: The ``HEAD`` of a redirected hit, shared by the requests that wait for it.
        self._checks = SingleFlight()
        self.part_bytes = part_bytes
        self._body_check: str | None = None
        self._body_check_lock = threading.Lock()
        self.spool = Spool(local_root)
        self._janitor = S3Janitor(self)

    @classmethod
    def from_config(cls, config: ProxyConfig) -> S3Store:
        """The store ``STORAGE_URL`` names, with one client for the application."""
        assert config.storage_url is not None
        bucket, _, prefix = config.storage_url.removeprefix("s3://").partition("/")
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=config.s3_endpoint_url,
            region_name=config.s3_region,
            config=Config(
                signature_version="s3v4",
                # Every body we send carries a checksum that the store verifies
                # (:meth:`S3Store.body_check`), computed off gevent's event loop; SigV4's
                # own body hash would run on the loop that serves the clients (over
                # plain http it always does).
                s3={
                    "addressing_style": config.s3_addressing_style,
                    "payload_signing_enabled": False,
                },
                connect_timeout=5,
                read_timeout=60,
                retries={"mode": "standard", "max_attempts": 3},
                max_pool_connections=64,
                # Compatible servers do not all know the newer default checksums.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        return cls(
            client,
            bucket,
            prefix,
            config.storage_path,
            endpoint_url=config.s3_endpoint_url,
            redirect=config.s3_redirect,
            presign_seconds=config.s3_presign_seconds,
            verify_seconds=config.s3_verify_seconds,
        )

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} (endpoint {self.endpoint_url or 'AWS S3'})"

    def key(self, digest: str) -> str:
        """The object key of a committed blob. ``digest`` must already be validated."""
        algorithm, hex_digest = digest.split(":", 1)
        return f"{self.prefix}blobs/{algorithm}/{hex_digest[:2]}/{hex_digest}"

    def size(self, digest: str) -> int | None:
        key = self.key(digest)
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if is_missing(exc):
                return None
            raise storage_error("read", key, exc) from exc
        return int(answer["ContentLength"])

    def recorded_size(self, digest: str, size: int) -> int | None:
        """The recorded size. A streamed hit trusts it (opening the object tells); a
        redirected one checks the object with a ``HEAD`` unless one found it within
        ``verify_seconds``. A store that cannot answer the check is trusted too: the
        client finds out at the store, as with any redirect."""
        if not self.redirect or digest in self._verified:
            return size
        try:
            found = self._checks.do(digest, lambda: self.size(digest))
        except StorageError:
            return size
        if found is not None:
            self._verified.add(digest)
        return found

    def mark_verified(self, digest: str) -> None:
        """The object of ``digest`` is known to exist now (committed by this process)."""
        self._verified.add(digest)

    def locate(self, digest: str, size: int) -> Redirect | ByteStream:
        key = self.key(digest)
        if self.redirect:
            try:
                # Signed here, no request: a missing object shows at the client.
                url = self.client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket, "Key": key},
                    ExpiresIn=self.presign_seconds,
                )
            except Exception as exc:  # no credentials, a broken configuration
                raise storage_error("sign a URL of", key, exc) from exc
            return Redirect(url)
        return ByteStream(size, open=lambda: _chunks(self.open(digest)))

    def open(self, digest: str) -> t.BinaryIO:
        """The committed blob's body, read as it downloads.

        :raises FileNotFoundError: when it is not stored.
        :raises StorageError: when the object store cannot be reached.
        """
        key = self.key(digest)
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if is_missing(exc):
                raise FileNotFoundError(2, "no such object", key) from exc
            raise storage_error("read", key, exc) from exc
        return t.cast(t.BinaryIO, answer["Body"])

    def stage(self, digest: str, size: int | None, *, upload: bool = True) -> StagedObject:
        spool = self.spool.create(digest)
        return StagedObject(self, digest, spool, self.part_size(size), upload=upload)

    def part_size(self, size: int | None) -> int:
        """Bytes per part for a blob of ``size``: at least :attr:`part_bytes`, whole MiB,
        and few enough parts for S3's limit."""
        return part_size(size, self.part_bytes)

    def body_check(self, key: str) -> str:
        """The checksum that bodies sent to the store carry: ``CRC32``
        (``x-amz-checksum-crc32``, a fifth of MD5's CPU) where the store verifies it (AWS
        S3, MinIO, SeaweedFS, Ceph 18 and later), else ``MD5`` (``Content-MD5``, which
        every S3-compatible store checks). Found out once per process, at the first
        upload, by a small ``PutObject`` whose CRC32 is wrong: a store that verifies the
        header refuses it (:func:`.s3_upload.probe_body_check`).

        :param key: the object the body is for, named by the error when the store cannot
            be reached.
        """
        with self._body_check_lock:
            if self._body_check is None:
                self._body_check = probe_body_check(self, key)
            return self._body_check

    def check(self) -> None:
        self.spool.check()
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise storage_error("reach", f"s3://{self.bucket}", exc) from exc

    def free_bytes(self) -> int | None:
        """Free space of the local spool folder: the object store sets no limit we see."""
        return self.spool.free_bytes()

    def delete(self, digest: str) -> bool:
        key = self.key(digest)
        self._verified.discard(digest)
        if self.size(digest) is None:
            return False
        self.delete_key(key)
        return True

    def delete_key(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise storage_error("delete", key, exc) from exc

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload; one already gone is fine."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            if not is_missing(exc):
                raise storage_error("abort upload", key, exc) from exc

    # -- cleanup (:mod:`.s3_janitor`) ----------------------------------------------------

    def committed(self) -> t.Iterator[tuple[str, float]]:
        return self._janitor.committed()

    def usage(self) -> tuple[int, int]:
        return self._janitor.usage()

    def set_aside(self, digest: str, stamp: dt.datetime) -> bool:
        """Copy a committed blob into the trash and delete its key (S3 has no rename):
        presigned URLs handed out already stop working."""
        self._verified.discard(digest)
        return self._janitor.set_aside(digest, stamp)

    def set_aside_blobs(self) -> t.Iterator[tuple[str, dt.datetime, str]]:
        return self._janitor.set_aside_blobs()

    def restore(self, digest: str, handle: str) -> bool:
        return self._janitor.restore(digest, handle)

    def delete_set_aside(self, handle: str) -> int | None:
        return self._janitor.delete_set_aside(handle)

    def remove_stale_staging(self, older_than: dt.datetime) -> int:
        """Remove stale local spool files (but those of fetches still running here) and
        abort the multipart uploads of fetches killed before ``older_than`` (started
        before it, no part uploaded since)."""
        return self._janitor.remove_stale_staging(older_than)


class _RecentlySeen:
    """Digests seen within the last ``seconds``, per process; bounded, oldest out first."""

    def __init__(self, seconds: float, max_entries: int = 10_000) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, digest: str) -> None:
        if self.seconds <= 0:
            return
        with self._lock:
            self._seen.pop(digest, None)
            self._seen[digest] = time.monotonic() + self.seconds
            while len(self._seen) > self.max_entries:
                del self._seen[next(iter(self._seen))]

    def discard(self, digest: str) -> None:
        with self._lock:
            self._seen.pop(digest, None)

    def __contains__(self, digest: str) -> bool:
        until = self._seen.get(digest)
        return until is not None and time.monotonic() < until


def _chunks(body: t.BinaryIO) -> t.Iterator[bytes]:
    with body:
        while chunk := body.read(_STREAM_CHUNK):
            yield chunk
