"""How the object store's failures reach the callers of :class:`~.s3.S3Store`: a
:class:`~.base.StorageError` naming the key, or an answer that the object is missing.

Shared by the store (:mod:`.s3`), its uploads (:mod:`.s3_upload`) and its sweeping face
(:mod:`.s3_janitor`).
"""

from __future__ import annotations

# boto3 ships no type information.
import botocore.exceptions  # type: ignore[import-untyped]

from .base import StorageError

_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}


def is_missing(exc: BaseException) -> bool:
    """Whether the store answered that the object (or upload) does not exist."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code")) in _MISSING
    return False


def storage_error(action: str, key: str, exc: BaseException) -> StorageError:
    return StorageError(f"object store cannot {action} {key}: {exc}", path=key)


def as_storage_error(exc: BaseException, key: str) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    return storage_error("upload", key, exc)
