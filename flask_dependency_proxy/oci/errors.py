"""Registry error codes and the error envelope of the distribution spec.

No Flask here: the registry blueprint turns a :class:`RegistryError` into a response.
"""

from __future__ import annotations

import dataclasses
import enum
import typing as t


@dataclasses.dataclass(frozen=True)
class _Descriptor:
    message: str
    status: int


class ErrorCode(enum.Enum):
    """The spec's error codes with their default message and HTTP status."""

    UNAUTHORIZED = _Descriptor("authentication required", 401)
    DENIED = _Descriptor("requested access to the resource is denied", 403)
    NAME_INVALID = _Descriptor("invalid repository name", 400)
    NAME_UNKNOWN = _Descriptor("repository name not known to registry", 404)
    MANIFEST_UNKNOWN = _Descriptor("manifest unknown", 404)
    MANIFEST_INVALID = _Descriptor("manifest invalid", 502)
    BLOB_UNKNOWN = _Descriptor("blob unknown to registry", 404)
    DIGEST_INVALID = _Descriptor("provided digest did not match uploaded content", 400)
    TAG_INVALID = _Descriptor("manifest tag did not match URI", 400)
    RANGE_INVALID = _Descriptor("invalid content range", 416)
    TOOMANYREQUESTS = _Descriptor("too many requests", 429)
    UNSUPPORTED = _Descriptor("the operation is unsupported", 405)
    UNAVAILABLE = _Descriptor("upstream registry unavailable", 503)
    UNKNOWN = _Descriptor("unknown error", 500)

    @property
    def status(self) -> int:
        return self.value.status

    @property
    def message(self) -> str:
        return self.value.message


class RegistryError(Exception):
    """An error a registry client should see, in the spec's JSON envelope.

    :param code: the spec's error code; it sets the HTTP status unless ``status`` is given.
    :param message: human-readable text; the code's default when omitted.
    :param detail: structured detail (must be JSON-serializable).
    :param headers: extra response headers, e.g. ``Retry-After``.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        detail: t.Any = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or code.message)
        self.code = code
        self.message = message or code.message
        self.detail = detail
        self.status = status or code.status
        self.headers = headers or {}

    def as_dict(self) -> dict[str, t.Any]:
        error: dict[str, t.Any] = {"code": self.code.name, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}


def storage_unavailable() -> RegistryError:
    """The error for a blob the cache cannot store (disk full, read-only, failing).

    503, like an upstream outage: the client may retry, and the pull works again once
    the store has room.
    """
    return RegistryError(ErrorCode.UNAVAILABLE, "the cache's blob storage is full or not writable")
