"""The sweeping face of :class:`~.s3.S3Store`: what cleanup does to committed blobs.

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

import datetime as dt
import re
import typing as t

# boto3 ships no type information.
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

from .s3_errors import is_missing, storage_error

if t.TYPE_CHECKING:
    from .s3 import S3Store

#: Largest object a single server-side copy may produce.
_MAX_COPY_BYTES = 5 * 1024**3
_BLOB_KEY = re.compile(r"(?P<algorithm>sha256|sha512)/(?P<prefix>[a-f0-9]{2})/(?P<hex>[a-f0-9]+)")
_TRASH_KEY = re.compile(r"(?P<algorithm>sha256|sha512)-(?P<hex>[a-f0-9]+)\.(?P<stamp>[0-9]{1,18})")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}


class S3Janitor:
    """Lists, sets aside, restores and deletes the committed blobs of ``store``, and
    removes what killed fetches left; the store's :class:`~.base.StoreJanitor` methods
    call it."""

    def __init__(self, store: S3Store) -> None:
        self.store = store

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
        size = self.store.size(digest)
        if size is None:
            return False
        algorithm, hex_digest = digest.split(":", 1)
        target = f"{self.store.prefix}trash/{algorithm}-{hex_digest}.{_epoch_ms(stamp)}"
        if not self._copy(self.store.key(digest), target, size):
            return False
        self.store.delete_key(self.store.key(digest))
        return True

    def set_aside_blobs(self) -> t.Iterator[tuple[str, dt.datetime, str]]:
        folder = f"{self.store.prefix}trash/"
        for item in self._list(folder):
            match = _TRASH_KEY.fullmatch(item["Key"][len(folder) :])
            if match is None or len(match["hex"]) != _HEX_LENGTH[match["algorithm"]]:
                continue
            stamp = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=int(match["stamp"]))
            yield f"{match['algorithm']}:{match['hex']}", stamp, item["Key"]

    def restore(self, digest: str, handle: str) -> bool:
        self._check_trash_key(handle)
        if self.store.size(digest) is not None:
            # Fetched and committed again meanwhile: that copy wins.
            self.store.delete_key(handle)
            return False
        size = self._object_size(handle)
        if size is None or not self._copy(handle, self.store.key(digest), size):
            return False
        self.store.delete_key(handle)
        return True

    def delete_set_aside(self, handle: str) -> int | None:
        self._check_trash_key(handle)
        size = self._object_size(handle)
        if size is None:
            return None
        self.store.delete_key(handle)
        return size

    def remove_stale_staging(self, older_than: dt.datetime) -> int:
        """Remove stale local spool files (but those of fetches still running here) and
        abort the multipart uploads of fetches killed before ``older_than`` (started
        before it, no part uploaded since)."""
        removed = self.store.spool.remove_stale(older_than)
        limit = older_than.replace(tzinfo=dt.UTC)
        folder = f"{self.store.prefix}blobs/"
        try:
            pages = self.store.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.store.bucket, Prefix=folder
            )
            stale = [
                upload
                for page in pages
                for upload in page.get("Uploads", [])
                if upload["Initiated"] < limit
            ]
        except Exception as exc:
            raise storage_error("list uploads", folder, exc) from exc
        for upload in stale:
            if self._last_part_time(upload) >= limit:
                continue
            self.store.abort_upload(upload["Key"], upload["UploadId"])
            removed += 1
        return removed

    # -- object operations ---------------------------------------------------------------

    def _listed_blobs(self) -> t.Iterator[tuple[str, float, int]]:
        folder = f"{self.store.prefix}blobs/"
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
            pages = self.store.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.store.bucket, Prefix=folder
            )
            for page in pages:
                yield from page.get("Contents", [])
        except Exception as exc:
            raise storage_error("list", folder, exc) from exc

    def _object_size(self, key: str) -> int | None:
        try:
            answer = self.store.client.head_object(Bucket=self.store.bucket, Key=key)
        except Exception as exc:
            if is_missing(exc):
                return None
            raise storage_error("read", key, exc) from exc
        return int(answer["ContentLength"])

    def _copy(self, source: str, target: str, size: int) -> bool:
        """Server-side copy; ``False`` when ``source`` is gone."""
        try:
            if size <= _MAX_COPY_BYTES:
                self.store.client.copy_object(
                    Bucket=self.store.bucket,
                    Key=target,
                    CopySource={"Bucket": self.store.bucket, "Key": source},
                )
            else:
                self.store.client.copy(
                    {"Bucket": self.store.bucket, "Key": source},
                    self.store.bucket,
                    target,
                    Config=TransferConfig(use_threads=False, multipart_chunksize=_MAX_COPY_BYTES),
                )
        except Exception as exc:
            if is_missing(exc):
                return False
            raise storage_error("copy", target, exc) from exc
        return True

    def _last_part_time(self, upload: dict[str, t.Any]) -> dt.datetime:
        """When the newest part of ``upload`` arrived (its start when it has none)."""
        newest: dt.datetime = upload["Initiated"]
        try:
            pages = self.store.client.get_paginator("list_parts").paginate(
                Bucket=self.store.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            for page in pages:
                for part in page.get("Parts", []):
                    newest = max(newest, part["LastModified"])
        except Exception as exc:
            if is_missing(exc):
                return newest
            raise storage_error("list parts", upload["Key"], exc) from exc
        return newest

    def _check_trash_key(self, handle: str) -> None:
        folder = f"{self.store.prefix}trash/"
        if not handle.startswith(folder) or not _TRASH_KEY.fullmatch(handle[len(folder) :]):
            raise ValueError(f"not a set-aside blob of this store: {handle!r}")


def _epoch_ms(moment: dt.datetime) -> int:
    return int(moment.replace(tzinfo=dt.UTC).timestamp() * 1000)
