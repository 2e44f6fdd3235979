"""The peer route: another host of the fleet reads a blob this host is fetching.

Reached at ``PEER_URL`` by the hosts that share the database, never by registry
clients: a request must carry a token signed with the fleet's ``SECRET_KEY`` for this
host, the very digest and offset it asks for, sent from the address of the host it
names, and a few seconds old at most (:class:`~.coordination.PeerTokens`). The token is
checked before anything in the path or the query is looked at. With
``PEER_LISTENER_PORT`` the route answers on that listener only. The bytes come from
this host's fetch as they arrive (its last chunk only once the blob is verified and
committed), or from the store once it is committed, from the requested offset on (a
host resuming a broken stream; the bytes before it are not read); a fetch that breaks
ends the response short, so the reading host never mistakes it for a whole blob (it
verifies the digest itself as well).
"""

from __future__ import annotations

import logging
import typing as t

from flask import Blueprint, Response, abort, request

from .._state import state
from ..fetch.peer_tokens import PEER_BLOB_PATH, InvalidPeerToken, comes_from, parse_offset
from ..oci.reference import is_digest
from ..stores.base import StorageError
from ..upstream.errors import UpstreamError
from ._ranges import skipped

bp = Blueprint("dependency_proxy_peer", __name__)

log = logging.getLogger(__name__)


@bp.route(f"{PEER_BLOB_PATH}<digest>", methods=["GET"])
def blob(digest: str) -> Response:
    proxy = state(None)
    fleet = proxy.cache.fetcher.fleet
    listener = proxy.config.peer_listener_port
    if fleet is None or (listener is not None and _arrived_on() != str(listener)):
        abort(404)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        abort(403)
    address = _connected_from()
    try:
        grant = fleet.tokens.verify(token.strip(), digest)
    except InvalidPeerToken as exc:
        log.warning("peer request from %s refused: %s", address, exc)
        abort(403)
    if not comes_from(grant.requester, address):
        log.warning("peer request from %s refused: its token is for %s", address, grant.requester)
        abort(403)
    offset = parse_offset(request.args.get("offset", "0"))
    if offset is None:
        abort(400)
    if offset != grant.offset:
        abort(403)
    if not is_digest(digest):
        abort(404)
    try:
        fetch = proxy.cache.fetcher.join(digest)
    except UpstreamError:
        abort(404)
    if fetch is not None:
        # The stream ends once the blob is verified, so the reading host's clients do
        # not wait for this host's upload; the reading host waits for the commit (while
        # this host holds the fetch lease) before it decides not to upload it itself.
        chunks = fetch.follow(proxy.store, start=offset)
        size = fetch.size
    else:
        size = proxy.store.size(digest)
        if size is None:
            abort(404)
        if offset > size:
            abort(416)
        try:
            file = proxy.store.open(digest)
        except (FileNotFoundError, StorageError):
            abort(404)
        chunks = _read(file, offset)
    if size is not None and offset > size:
        abort(416)
    response = Response(chunks, mimetype="application/octet-stream", direct_passthrough=True)
    if size is not None:
        response.headers["Content-Length"] = str(size - offset)
    return response


def _original(key: str) -> str:
    """An environ value as the WSGI server set it, before ``ProxyFix`` rewrote it from
    headers a client chose (the listener and the address the connection came from)."""
    orig = request.environ.get("werkzeug.proxy_fix.orig") or {}
    return str(orig.get(key) or request.environ.get(key) or "")


def _arrived_on() -> str:
    """The port of the listener the request came in on (gunicorn's ``SERVER_PORT``)."""
    return _original("SERVER_PORT")


def _connected_from() -> str:
    return _original("REMOTE_ADDR")


def _read(file: t.BinaryIO, offset: int) -> t.Iterator[bytes]:
    """The committed blob from ``offset`` on (skipped by reading where the store's body
    cannot seek)."""
    with file:
        if file.seekable():
            file.seek(offset)
        else:
            yield from skipped(_chunks(file), offset)
            return
        yield from _chunks(file)


def _chunks(file: t.BinaryIO) -> t.Iterator[bytes]:
    while chunk := file.read(1024 * 1024):
        yield chunk
