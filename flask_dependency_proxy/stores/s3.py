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

A blob being fetched is spooled to a local file (followers on this host read it as it
grows). Meanwhile a thread uploads the finished parts of that file to a multipart
upload of the blob's final key; committing uploads the last part and completes the upload,
which is what makes the object visible, atomically. A blob smaller than one part is sent
with a single ``PutObject`` at commit. A discarded fetch aborts its upload.

A hit asks the store almost nothing before it is answered: the database knows the
blob's size and a presigned URL is signed locally. An object gone from under its row (a
pull racing cleanup's set-aside, or a delete behind the cache's back) shows when a
streamed hit opens it (its ``GetObject`` is its first request), and the request's retry
fetches it again. A redirected hit cannot see what the client gets, so a worker checks
each object with a ``HEAD`` at most once per ``S3_VERIFY_SECONDS`` (committing it counts
as a check): a missing object
fails clients for at most that long, and the next hit fetches the blob again.

S3 has no rename or hard link, so cleanup maps onto it as follows:

- *set aside*: a server-side copy to the trash key, then a delete of the blob's key;
- *restore*: a copy back, unless a fetch committed the blob again meanwhile;
- *committed*: ``ListObjectsV2`` of ``blobs/``, ``LastModified`` as the commit time;
- *stale staging*: local spool files nobody wrote to lately, and multipart uploads
  under the prefix started before the threshold whose newest part is older too (what a
  killed process leaves; a bucket lifecycle rule that aborts incomplete uploads is a
  second safety net).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import os
import re
import threading
import time
import typing as t
import uuid
import zlib

# boto3 ships no type information.
import boto3  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from ..blocking import off_the_loop
from ..config import ProxyConfig
from .base import ByteStream, Redirect, StorageError
from .spool import Spool, SpoolFile, open_for_reading

#: Smallest part uploaded while a blob arrives (S3's own minimum is 5 MiB).
MIN_PART_BYTES = 8 * 1024 * 1024
#: Parts per upload kept below S3's limit of 10,000, with room to spare.
_MAX_PARTS = 9000
#: Part size when upstream announced no size: enough for blobs up to ~280 GiB.
_UNKNOWN_SIZE_PART_BYTES = 32 * 1024 * 1024
#: Bytes per chunk of a blob the proxy streams itself.
_STREAM_CHUNK = 1024 * 1024
#: Parts of one blob uploaded at once. One: the upload then competes least with the
#: client's stream for the worker and the network, and what it has not sent when the
#: last byte arrives goes up at the commit, after the client has its bytes.
_PARALLEL_PARTS = 1
#: How often an upload thread looks for a finished part.
_POLL_SECONDS = 0.02
#: Largest object a single server-side copy may produce.
_MAX_COPY_BYTES = 5 * 1024**3
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
#: What a store answers to a body whose checksum it computed and found different.
_CHECKSUM_REFUSED = {"BadDigest", "XAmzContentChecksumMismatch"}
#: The checks a body can carry, and the request parameter of each.
CRC32, MD5 = "CRC32", "MD5"
_CHECKSUM_PARAMETER = {CRC32: "ChecksumCRC32", MD5: "ContentMD5"}
_BLOB_KEY = re.compile(r"(?P<algorithm>sha256|sha512)/(?P<prefix>[a-f0-9]{2})/(?P<hex>[a-f0-9]+)")
_TRASH_KEY = re.compile(r"(?P<algorithm>sha256|sha512)-(?P<hex>[a-f0-9]+)\.(?P<stamp>[0-9]{1,18})")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}


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
        self.part_bytes = part_bytes
        self._body_check: str | None = None
        self._body_check_lock = threading.Lock()
        self.spool = Spool(local_root)

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
            if _is_missing(exc):
                return None
            raise _storage_error("read", key, exc) from exc
        return int(answer["ContentLength"])

    def recorded_size(self, digest: str, size: int) -> int | None:
        """The recorded size. A streamed hit trusts it (opening the object tells); a
        redirected one checks the object with a ``HEAD`` unless one found it within
        ``verify_seconds``. A store that cannot answer the check is trusted too: the
        client finds out at the store, as with any redirect."""
        if not self.redirect or digest in self._verified:
            return size
        try:
            found = self.size(digest)
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
                raise _storage_error("sign a URL of", key, exc) from exc
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
            if _is_missing(exc):
                raise FileNotFoundError(2, "no such object", key) from exc
            raise _storage_error("read", key, exc) from exc
        return t.cast(t.BinaryIO, answer["Body"])

    def stage(self, digest: str, size: int | None, *, upload: bool = True) -> StagedObject:
        spool = self.spool.create(digest)
        return StagedObject(self, digest, spool, self.part_size(size), upload=upload)

    def part_size(self, size: int | None) -> int:
        """Bytes per part for a blob of ``size``: at least :attr:`part_bytes`, whole MiB,
        and few enough parts for S3's limit."""
        if size is None:
            return max(self.part_bytes, _UNKNOWN_SIZE_PART_BYTES)
        mib = 1024 * 1024
        needed = math.ceil(math.ceil(size / _MAX_PARTS) / mib) * mib
        return max(self.part_bytes, needed)

    def body_check(self, key: str) -> str:
        """The checksum that bodies sent to the store carry: :data:`CRC32`
        (``x-amz-checksum-crc32``, a fifth of MD5's CPU) where the store verifies it (AWS
        S3, MinIO, SeaweedFS, Ceph 18 and later), else :data:`MD5` (``Content-MD5``, which
        every S3-compatible store checks). Found out once per process, at the first
        upload, by a small ``PutObject`` whose CRC32 is wrong: a store that verifies the
        header refuses it.

        :param key: the object the body is for, named by the error when the store cannot
            be reached.
        """
        with self._body_check_lock:
            if self._body_check is None:
                self._body_check = self._probe_body_check(key)
            return self._body_check

    def _probe_body_check(self, key: str) -> str:
        probe = f"{self.prefix}probes/crc32-{uuid.uuid4().hex}"
        body = b"Does this store verify x-amz-checksum-crc32?"
        wrong = base64.b64encode((zlib.crc32(body) ^ 0xFFFFFFFF).to_bytes(4, "big")).decode()
        try:
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=body, ChecksumCRC32=wrong)
        except botocore.exceptions.ClientError as exc:
            # Refused for its checksum: verified. Refused for the header (unknown,
            # unsupported) or anything else: MD5, which is always safe.
            return CRC32 if exc.response.get("Error", {}).get("Code") in _CHECKSUM_REFUSED else MD5
        except Exception as exc:
            raise _storage_error("write", key, exc) from exc
        # Accepted: the store ignores the header.
        self._delete_key(probe)
        return MD5

    def check(self) -> None:
        self.spool.check()
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise _storage_error("reach", f"s3://{self.bucket}", exc) from exc

    def free_bytes(self) -> int | None:
        """Free space of the local spool folder: the object store sets no limit we see."""
        return self.spool.free_bytes()

    def delete(self, digest: str) -> bool:
        key = self.key(digest)
        self._verified.discard(digest)
        if self.size(digest) is None:
            return False
        self._delete_key(key)
        return True

    # -- cleanup -----------------------------------------------------------------------

    def committed(self) -> t.Iterator[tuple[str, float]]:
        for digest, modified, _size in self._listed_blobs():
            yield digest, modified

    def usage(self) -> tuple[int, int]:
        count = total = 0
        for _digest, _modified, size in self._listed_blobs():
            count += 1
            total += size
        return count, total

    def set_aside(self, digest: str, stamp: dt.datetime) -> bool:
        """Copy a committed blob into the trash and delete its key (S3 has no rename):
        presigned URLs handed out already stop working."""
        self._verified.discard(digest)
        size = self.size(digest)
        if size is None:
            return False
        algorithm, hex_digest = digest.split(":", 1)
        target = f"{self.prefix}trash/{algorithm}-{hex_digest}.{_epoch_ms(stamp)}"
        if not self._copy(self.key(digest), target, size):
            return False
        self._delete_key(self.key(digest))
        return True

    def set_aside_blobs(self) -> t.Iterator[tuple[str, dt.datetime, str]]:
        folder = f"{self.prefix}trash/"
        for item in self._list(folder):
            match = _TRASH_KEY.fullmatch(item["Key"][len(folder) :])
            if match is None or len(match["hex"]) != _HEX_LENGTH[match["algorithm"]]:
                continue
            stamp = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=int(match["stamp"]))
            yield f"{match['algorithm']}:{match['hex']}", stamp, item["Key"]

    def restore(self, digest: str, handle: str) -> bool:
        self._check_trash_key(handle)
        if self.size(digest) is not None:
            # Fetched and committed again meanwhile: that copy wins.
            self._delete_key(handle)
            return False
        size = self._object_size(handle)
        if size is None or not self._copy(handle, self.key(digest), size):
            return False
        self._delete_key(handle)
        return True

    def delete_set_aside(self, handle: str) -> int | None:
        self._check_trash_key(handle)
        size = self._object_size(handle)
        if size is None:
            return None
        self._delete_key(handle)
        return size

    def remove_stale_staging(self, older_than: dt.datetime) -> int:
        """Remove stale local spool files (but those of fetches still running here) and
        abort the multipart uploads of fetches killed before ``older_than`` (started
        before it, no part uploaded since)."""
        removed = self.spool.remove_stale(older_than)
        limit = older_than.replace(tzinfo=dt.UTC)
        folder = f"{self.prefix}blobs/"
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            stale = [
                upload
                for page in pages
                for upload in page.get("Uploads", [])
                if upload["Initiated"] < limit
            ]
        except Exception as exc:
            raise _storage_error("list uploads", folder, exc) from exc
        for upload in stale:
            if self._last_part_time(upload) >= limit:
                continue
            self.abort_upload(upload["Key"], upload["UploadId"])
            removed += 1
        return removed

    # -- object operations ---------------------------------------------------------------

    def _listed_blobs(self) -> t.Iterator[tuple[str, float, int]]:
        folder = f"{self.prefix}blobs/"
        for item in self._list(folder):
            match = _BLOB_KEY.fullmatch(item["Key"][len(folder) :])
            if (
                match is None
                or not match["hex"].startswith(match["prefix"])
                or len(match["hex"]) != _HEX_LENGTH[match["algorithm"]]
            ):
                continue
            yield (
                f"{match['algorithm']}:{match['hex']}",
                item["LastModified"].timestamp(),
                int(item["Size"]),
            )

    def _list(self, folder: str) -> t.Iterator[dict[str, t.Any]]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            for page in pages:
                yield from page.get("Contents", [])
        except Exception as exc:
            raise _storage_error("list", folder, exc) from exc

    def _object_size(self, key: str) -> int | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise _storage_error("read", key, exc) from exc
        return int(answer["ContentLength"])

    def _copy(self, source: str, target: str, size: int) -> bool:
        """Server-side copy; ``False`` when ``source`` is gone."""
        try:
            if size <= _MAX_COPY_BYTES:
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=target,
                    CopySource={"Bucket": self.bucket, "Key": source},
                )
            else:
                self.client.copy(
                    {"Bucket": self.bucket, "Key": source},
                    self.bucket,
                    target,
                    Config=TransferConfig(use_threads=False, multipart_chunksize=_MAX_COPY_BYTES),
                )
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise _storage_error("copy", target, exc) from exc
        return True

    def _delete_key(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise _storage_error("delete", key, exc) from exc

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload; one already gone is fine."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            if not _is_missing(exc):
                raise _storage_error("abort upload", key, exc) from exc

    def _last_part_time(self, upload: dict[str, t.Any]) -> dt.datetime:
        """When the newest part of ``upload`` arrived (its start when it has none)."""
        newest: dt.datetime = upload["Initiated"]
        try:
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            for page in pages:
                for part in page.get("Parts", []):
                    newest = max(newest, part["LastModified"])
        except Exception as exc:
            if _is_missing(exc):
                return newest
            raise _storage_error("list parts", upload["Key"], exc) from exc
        return newest

    def _check_trash_key(self, handle: str) -> None:
        folder = f"{self.prefix}trash/"
        if not handle.startswith(folder) or not _TRASH_KEY.fullmatch(handle[len(folder) :]):
            raise ValueError(f"not a set-aside blob of this store: {handle!r}")


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


class StagedObject:
    """A blob being fetched into the object store.

    :meth:`write` only appends to the local spool file (it runs in an OS thread of the
    worker's pool, where network I/O would block its event loop). With ``upload``,
    threads of the worker (greenlets under gevent) upload each finished part of that file
    to a multipart upload of the final key while bytes still arrive, one part at a time.
    """

    def __init__(
        self,
        store: S3Store,
        digest: str,
        spool: SpoolFile,
        part_bytes: int,
        *,
        upload: bool,
    ) -> None:
        self.store = store
        self.digest = digest
        self.key = store.key(digest)
        self.spool_path = spool.path
        self.part_bytes = part_bytes
        self._spool = spool
        self._upload = upload
        self._lock = threading.Lock()
        self._upload_id: str | None = None
        #: Uploaded parts by number, as ``CompleteMultipartUpload`` lists them.
        self._parts: dict[int, dict[str, t.Any]] = {}
        #: The store's :meth:`S3Store.body_check`, asked at the first upload.
        self._check: str | None = None
        #: Parts handed to an uploader so far (part ``n`` starts at ``n * part_bytes``).
        self._claimed = 0
        self._error: BaseException | None = None
        #: ``stop``: give up after the part in hand; ``drain``: upload every whole part.
        self._stop = False
        self._drain = False
        self._finished = False
        self._uploaders: list[threading.Thread] = []
        if upload:
            self._start_uploaders()

    @property
    def _written(self) -> int:
        """Bytes in the spool file; changed only by :meth:`write` and :meth:`restart`."""
        return self._spool.written

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            raise _as_storage_error(self._error, self.key)
        self._spool.write(chunk)

    def restart(self) -> None:
        self._stop_uploaders(drain=False)
        self._abort_upload()
        self._spool.truncate()
        self._claimed = 0
        self._parts = {}
        self._error = None
        if self._upload:
            self._start_uploaders()

    def commit(self) -> None:
        """Upload what is left and complete the upload: the object appears under its key
        now, verified. The spool file is removed (open readers keep reading it)."""
        if self._upload_id is None and self._written < self.part_bytes:
            self._stop_uploaders(drain=False)
        else:
            if not self._uploaders:
                self._start_uploaders()
            self._stop_uploaders(drain=True)
        self._spool.close()
        if self._error is not None:
            self._abort_upload()
            raise _as_storage_error(self._error, self.key)
        try:
            if self._upload_id is None and self._written < self.part_bytes:
                self._put_whole()
            else:
                start = self._claimed * self.part_bytes
                if start < self._written or not self._parts:
                    self._upload_part(self._claimed + 1, start, self._written - start)
                self._complete()
        except BaseException:
            self._abort_upload()
            raise
        # Redirected hits of this worker need not check an object it just wrote.
        self.store.mark_verified(self.digest)
        self._finished = True
        self._spool.remove()

    def discard(self) -> None:
        self._stop_uploaders(drain=False)
        self._spool.close()
        if not self._finished:
            self._abort_upload()
        self._finished = True
        self._spool.remove()

    # -- the upload threads ------------------------------------------------------------

    def _start_uploaders(self) -> None:
        self._stop = self._drain = False
        self._uploaders = [
            threading.Thread(
                target=self._run_uploader, name=f"s3-upload-{self.digest[7:19]}", daemon=True
            )
            for _ in range(_PARALLEL_PARTS)
        ]
        for uploader in self._uploaders:
            uploader.start()

    def _stop_uploaders(self, *, drain: bool) -> None:
        """Wait for the uploaders; with ``drain`` they first upload every whole part."""
        uploaders, self._uploaders = self._uploaders, []
        if drain:
            self._drain = True
        else:
            self._stop = True
        for uploader in uploaders:
            uploader.join()

    def _run_uploader(self) -> None:
        try:
            while not self._stop and self._error is None:
                part = self._claim()
                if part is not None:
                    self._upload_part(part + 1, part * self.part_bytes, self.part_bytes)
                elif self._drain:
                    return
                else:
                    time.sleep(_POLL_SECONDS)
        except BaseException as exc:  # noqa: B036 - reported by the next write or commit
            self._error = exc

    def _claim(self) -> int | None:
        """The next whole part nobody uploads yet, ``None`` while there is none."""
        with self._lock:
            if self._written < (self._claimed + 1) * self.part_bytes:
                return None
            self._claimed += 1
            return self._claimed - 1

    def _upload_part(self, number: int, offset: int, length: int) -> None:
        check = self._body_check()
        data, checksum = self._read_spool(offset, length, check)
        client, bucket = self.store.client, self.store.bucket
        try:
            answer = client.upload_part(
                Bucket=bucket,
                Key=self.key,
                UploadId=self._started_upload(check),
                PartNumber=number,
                Body=data,
                **{_CHECKSUM_PARAMETER[check]: checksum},
            )
        except StorageError:
            raise
        except Exception as exc:
            raise _storage_error("upload part of", self.key, exc) from exc
        part = {"PartNumber": number, "ETag": answer["ETag"]}
        if check == CRC32:
            part["ChecksumCRC32"] = checksum
        self._parts[number] = part

    def _body_check(self) -> str:
        if self._check is None:
            self._check = self.store.body_check(self.key)
        return self._check

    def _read_spool(self, offset: int, length: int, check: str) -> tuple[bytes, str]:
        """``length`` bytes of the spool file from ``offset`` and their checksum,
        read and computed off gevent's event loop (8 MiB or more from the disk)."""
        try:
            data, checksum = off_the_loop(_read_part, self.spool_path, offset, length, check)
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.spool_path) from exc
        if len(data) != length:
            raise StorageError("the spool file ended early", path=self.spool_path)
        return data, checksum

    def _started_upload(self, check: str) -> str:
        """The multipart upload of the final key, started by the first part."""
        with self._lock:
            if self._upload_id is None:
                try:
                    answer = self.store.client.create_multipart_upload(
                        Bucket=self.store.bucket,
                        Key=self.key,
                        **({"ChecksumAlgorithm": CRC32} if check == CRC32 else {}),
                    )
                except Exception as exc:
                    raise _storage_error("start an upload of", self.key, exc) from exc
                self._upload_id = answer["UploadId"]
            return self._upload_id

    def _complete(self) -> None:
        parts = [self._parts[n] for n in sorted(self._parts)]
        try:
            self.store.client.complete_multipart_upload(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        except Exception as exc:
            raise _storage_error("complete upload of", self.key, exc) from exc
        self._upload_id = None

    def _put_whole(self) -> None:
        check = self._body_check()
        data, checksum = self._read_spool(0, self._written, check)
        try:
            self.store.client.put_object(
                Bucket=self.store.bucket,
                Key=self.key,
                Body=data,
                **{_CHECKSUM_PARAMETER[check]: checksum},
            )
        except Exception as exc:
            raise _storage_error("write", self.key, exc) from exc

    def _abort_upload(self) -> None:
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            self.store.abort_upload(self.key, upload_id)


def _read_part(path: str, offset: int, length: int, check: str) -> tuple[bytes, str]:
    """Bytes of a spool file and their base64 checksum of kind ``check`` (what the
    store verifies)."""
    with open_for_reading(path) as spool:
        data = os.pread(spool.fileno(), length, offset)
    if check == CRC32:
        value = zlib.crc32(data).to_bytes(4, "big")
    else:
        # An integrity check, not security: allowed where FIPS mode forbids MD5 otherwise.
        value = hashlib.md5(data, usedforsecurity=False).digest()
    return data, base64.b64encode(value).decode()


def _chunks(body: t.BinaryIO) -> t.Iterator[bytes]:
    with body:
        while chunk := body.read(_STREAM_CHUNK):
            yield chunk


def _is_missing(exc: BaseException) -> bool:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code")) in _MISSING
    return False


def _storage_error(action: str, key: str, exc: BaseException) -> StorageError:
    return StorageError(f"object store cannot {action} {key}: {exc}", path=key)


def _as_storage_error(exc: BaseException, key: str) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    return _storage_error("upload", key, exc)


def _epoch_ms(moment: dt.datetime) -> int:
    return int(moment.replace(tzinfo=dt.UTC).timestamp() * 1000)
