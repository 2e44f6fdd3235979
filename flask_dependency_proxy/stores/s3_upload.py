"""Uploading a blob being fetched to the object store, and the checksum its bodies carry.

A blob being fetched is spooled to a local file (followers on this host read it as it
grows). Meanwhile a thread uploads the finished parts of that file to a multipart
upload of the blob's final key (:class:`StagedObject`); committing uploads the last part
and completes the upload, which is what makes the object visible, atomically. A blob
smaller than one part is sent with a single ``PutObject`` at commit. A discarded fetch
aborts its upload.

Every body carries a checksum the store verifies, computed off gevent's event loop:
``x-amz-checksum-crc32`` where the store checks it, else ``Content-MD5``
(:func:`probe_body_check` finds out which, once per process).
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import threading
import time
import typing as t
import uuid
import zlib

# boto3 ships no type information.
import botocore.exceptions  # type: ignore[import-untyped]

from ..blocking import off_the_loop
from .base import StorageError
from .s3_errors import as_storage_error, storage_error
from .spool import SpoolFile, open_for_reading

if t.TYPE_CHECKING:
    from .s3 import S3Store

#: Smallest part uploaded while a blob arrives (S3's own minimum is 5 MiB).
MIN_PART_BYTES = 8 * 1024 * 1024
#: Parts per upload kept below S3's limit of 10,000, with room to spare.
_MAX_PARTS = 9000
#: Part size when upstream announced no size: enough for blobs up to ~280 GiB.
_UNKNOWN_SIZE_PART_BYTES = 32 * 1024 * 1024
#: Parts of one blob uploaded at once. One: the upload then competes least with the
#: client's stream for the worker and the network, and what it has not sent when the
#: last byte arrives goes up at the commit, after the client has its bytes.
_PARALLEL_PARTS = 1
#: How often an upload thread looks for a finished part.
_POLL_SECONDS = 0.02
#: What a store answers to a body whose checksum it computed and found different.
_CHECKSUM_REFUSED = {"BadDigest", "XAmzContentChecksumMismatch"}
#: The checks a body can carry, and the request parameter of each.
CRC32, MD5 = "CRC32", "MD5"
_CHECKSUM_PARAMETER = {CRC32: "ChecksumCRC32", MD5: "ContentMD5"}


def part_size(size: int | None, min_part_bytes: int) -> int:
    """Bytes per part for a blob of ``size``: at least ``min_part_bytes``, whole MiB,
    and few enough parts for S3's limit."""
    if size is None:
        return max(min_part_bytes, _UNKNOWN_SIZE_PART_BYTES)
    mib = 1024 * 1024
    needed = math.ceil(math.ceil(size / _MAX_PARTS) / mib) * mib
    return max(min_part_bytes, needed)


def probe_body_check(store: S3Store, key: str) -> str:
    """:data:`CRC32` when ``store`` refuses a small ``PutObject`` whose CRC32 is wrong
    (it verifies the header), else :data:`MD5`; see :meth:`S3Store.body_check
    <.s3.S3Store.body_check>`."""
    probe = f"{store.prefix}probes/crc32-{uuid.uuid4().hex}"
    body = b"Does this store verify x-amz-checksum-crc32?"
    wrong = base64.b64encode((zlib.crc32(body) ^ 0xFFFFFFFF).to_bytes(4, "big")).decode()
    try:
        store.client.put_object(Bucket=store.bucket, Key=probe, Body=body, ChecksumCRC32=wrong)
    except botocore.exceptions.ClientError as exc:
        # Refused for its checksum: verified. Refused for the header (unknown,
        # unsupported) or anything else: MD5, which is always safe.
        return CRC32 if exc.response.get("Error", {}).get("Code") in _CHECKSUM_REFUSED else MD5
    except Exception as exc:
        raise storage_error("write", key, exc) from exc
    # Accepted: the store ignores the header.
    store.delete_key(probe)
    return MD5


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
            raise as_storage_error(self._error, self.key)
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
            raise as_storage_error(self._error, self.key)
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
            raise storage_error("upload part of", self.key, exc) from exc
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
                    raise storage_error("start an upload of", self.key, exc) from exc
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
            raise storage_error("complete upload of", self.key, exc) from exc
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
            raise storage_error("write", self.key, exc) from exc

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
