"""Byte ranges of blob answers: one rule for every way the proxy sends a blob's bytes.

A cached file, a blob streamed from the object store and a miss still being fetched
answer a ``Range`` alike (RFC 9110, section 14), with werkzeug's parser, as cached files
always did: one range is answered ``206``; several ranges, a malformed header or a start
past the end are answered ``416 RANGE_INVALID`` with ``Content-Range: bytes */<size>``;
the whole blob is sent when the size is not known yet (an upstream that announced none),
or when ``If-Range`` names anything but the blob's own ``ETag`` (a blob has no
``Last-Modified``, so a date never matches).

A range of a miss is cut from the bytes of its fetch, fetched already and then as they
arrive. Its last piece waits until the fetch's stream has ended normally, that is until
the whole blob is verified (:func:`limited`): a range is never complete before its blob
is, so a fetch that fails leaves every ranged client short, as it does whole ones.
"""

from __future__ import annotations

import dataclasses
import typing as t

from werkzeug.http import parse_range_header

from ..fetch.errors import FetchFailed
from ..oci.errors import ErrorCode, RegistryError


@dataclasses.dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` up to ``stop`` (exclusive) of a blob of ``size`` bytes."""

    start: int
    stop: int
    size: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{self.size}"


def requested_range(
    header: str | None, if_range: str | None, size: int | None, etag: str
) -> ByteRange | None:
    """The range of a blob's ``size`` bytes that a ``GET`` with ``Range: header`` is
    answered with; ``None``: the whole blob.

    :param etag: the blob's ``ETag`` (quoted), which an ``If-Range`` must repeat.
    :raises RegistryError: ``416 RANGE_INVALID`` with ``Content-Range: bytes */<size>``.
    """
    if not header or not size:
        return None
    if if_range is not None and if_range.strip() != etag:
        return None
    parsed = parse_range_header(header)
    found = parsed.range_for_length(size) if parsed is not None else None
    if found is None:
        raise RegistryError(
            ErrorCode.RANGE_INVALID,
            f"the range {header[:100]!r} is not one range within the blob's {size} bytes",
            status=416,
            headers={"Content-Range": f"bytes */{size}"},
        )
    return ByteRange(found[0], found[1], size)


def skipped(chunks: t.Iterator[bytes], offset: int) -> t.Iterator[bytes]:
    """The bytes of ``chunks`` from ``offset`` on (a stream that cannot start there)."""
    for chunk in chunks:
        if offset >= len(chunk):
            offset -= len(chunk)
            continue
        yield chunk[offset:] if offset else chunk
        offset = 0


def limited(chunks: t.Iterator[bytes], length: int, *, until_end: bool) -> t.Iterator[bytes]:
    """The first ``length`` bytes of ``chunks``.

    :param until_end: hold the last piece back until ``chunks`` has ended normally (a
        fetch's stream, which ends so only for a verified blob), reading what is left
        meanwhile; otherwise stop reading (and close ``chunks``) once the bytes are out.
    :raises FetchFailed: ``chunks`` ended before ``length`` bytes, or broke.
    """
    remaining = length
    held = b""
    try:
        for chunk in chunks:
            if remaining > 0:
                piece = chunk[:remaining]
                remaining -= len(piece)
                if held:
                    yield held
                held = piece
            if remaining <= 0 and not until_end:
                break
        if remaining > 0:
            raise FetchFailed(f"the blob ended {remaining} bytes before the range did")
        if held:
            yield held
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
