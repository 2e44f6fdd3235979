"""Request bodies read only up to a bound, checked before anything reads them.

Every route of the extension that reads a body (the token form, the REST API's JSON,
the pages' forms) installs :func:`bound_body` as a ``before_request`` hook of its
blueprint, ahead of any hook that reads the form, so a large body costs the worker at
most the bound, whoever sends it. A declared ``Content-Length`` over the bound is
refused unread; a chunked body (no length) is cut off once it passes the bound.

Flask 3.1 lets a view lower ``request.max_content_length``; Flask 3.0 does not (the
property is read-only there), so the bound wraps the WSGI input itself, which every
version reads through.
"""

from __future__ import annotations

import io
import typing as t

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge


class BodyTooLarge(RequestEntityTooLarge):
    """A request body over its route's bound (413); each blueprint answers it in its
    own format. A :class:`~werkzeug.exceptions.RequestEntityTooLarge`, so handlers of
    that catch it too.

    :param limit: the bound, in bytes.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


class _CappedInput(io.RawIOBase):
    """The WSGI input, readable up to ``limit`` bytes: a read that finds more raises
    :class:`BodyTooLarge` instead of buffering it. (Werkzeug's ``LimitedStream`` with
    ``is_max`` ends a full read at the limit without a word, so a cut-off form would be
    parsed as if whole.)"""

    def __init__(self, stream: t.IO[bytes], limit: int) -> None:
        super().__init__()
        self._stream = stream
        self._limit = limit
        self._seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: t.Any) -> int:
        # One byte past the bound tells a body of exactly ``limit`` bytes from a longer one.
        want = min(len(buffer), self._limit + 1 - self._seen)
        if want <= 0:
            raise BodyTooLarge(self._limit)
        data = self._stream.read(want)
        self._seen += len(data)
        if self._seen > self._limit:
            raise BodyTooLarge(self._limit)
        buffer[: len(data)] = data
        return len(data)


def bound_body(limit: int) -> t.Callable[[], None]:
    """A ``before_request`` hook that bounds the request's body at ``limit`` bytes.

    :raises BodyTooLarge: at once for a declared ``Content-Length`` over ``limit``;
        later, from the read, for a chunked body that passes it.
    """

    def hook() -> None:
        length = request.content_length
        if length is not None:
            # The server (or Werkzeug) ends the input at the declared length.
            if length > limit:
                raise BodyTooLarge(limit)
            return
        environ = request.environ
        stream = environ.get("wsgi.input")
        if stream is not None and not isinstance(stream, _CappedInput):
            environ["wsgi.input"] = _CappedInput(stream, limit)

    return hook
