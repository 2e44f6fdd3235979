"""The peer route: another host of the fleet reads a blob this host is fetching.

Reached at ``PEER_URL`` by the hosts that share the database, never by registry
clients: a request must carry a token signed with the fleet's ``SECRET_KEY`` for the
very digest it asks for. The bytes come from this host's fetch as they arrive (its
last chunk only once the blob is verified and committed), or from the store once it
is committed; a fetch that breaks ends the response short, so the reading host never
mistakes it for a whole blob (it verifies the digest itself as well).
"""

from __future__ import annotations

import typing as t

from flask import Blueprint, Response, abort, request

from .._state import state
from ..blobstore import StorageError
from ..coordination import PEER_BLOB_PATH
from ..reference import is_digest
from ..upstream import UpstreamError

bp = Blueprint("dependency_proxy_peer", __name__)

_MAX_OFFSET = 1 << 62


@bp.route(f"{PEER_BLOB_PATH}<digest>", methods=["GET"])
def blob(digest: str) -> Response:
    proxy = state(None)
    fleet = proxy.cache.fetcher.fleet
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if fleet is None or not is_digest(digest):
        abort(404)
    if scheme.lower() != "bearer" or not fleet.tokens.valid_for(token.strip(), digest):
        abort(403)
    offset_text = request.args.get("offset", "0")
    if not offset_text.isdigit() or int(offset_text) >= _MAX_OFFSET:
        abort(400)
    offset = int(offset_text)
    try:
        fetch = proxy.cache.fetcher.join(digest)
    except UpstreamError:
        abort(404)
    if fetch is not None:
        # The reading host shares the store: it waits for the commit before it decides
        # not to upload the blob itself.
        chunks = fetch.follow(proxy.store, until_committed=True)
        size = fetch.size
    else:
        size = proxy.store.size(digest)
        if size is None:
            abort(404)
        try:
            file = proxy.store.open(digest)
        except (FileNotFoundError, StorageError):
            abort(404)
        chunks = _read(file)
    if size is not None and offset > size:
        abort(416)
    response = Response(
        _skip(chunks, offset), mimetype="application/octet-stream", direct_passthrough=True
    )
    if size is not None:
        response.headers["Content-Length"] = str(size - offset)
    return response


def _read(file: t.BinaryIO) -> t.Iterator[bytes]:
    with file:
        while chunk := file.read(1024 * 1024):
            yield chunk


def _skip(chunks: t.Iterator[bytes], offset: int) -> t.Iterator[bytes]:
    """The bytes of ``chunks`` from ``offset`` on (read locally, so skipping is cheap)."""
    for chunk in chunks:
        if offset >= len(chunk):
            offset -= len(chunk)
            continue
        yield chunk[offset:] if offset else chunk
        offset = 0
