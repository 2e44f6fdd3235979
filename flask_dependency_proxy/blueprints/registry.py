"""The pull side of the registry API under ``/v2/``.

Each view validates its input with :mod:`..reference`, checks access, calls one cache
method, and builds a response. Writes answer 405 UNSUPPORTED.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import typing as t
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, request
from werkzeug.utils import send_file
from werkzeug.wsgi import FileWrapper

from .._state import state
from ..cache.quota import blob_too_large
from ..cache.results import BlobResult, ManifestResult, PullRefused
from ..cache.signing import Decision
from ..fetch.errors import BlobTooLarge, FetchFailed
from ..host import Group, Principal
from ..models.database import DatabaseUnavailable
from ..oci.digits import ascii_int
from ..oci.errors import ErrorCode, RegistryError, storage_unavailable
from ..oci.reference import (
    MEDIA_TYPE_OCI_INDEX,
    ProxyPath,
    is_valid_tag,
    merge_accept,
    parse_proxy_path,
    validate_digest,
    validate_reference,
)
from ..signatures import Status
from ..stores.base import ByteStream, Following, LocalFile, Redirect, StorageError
from . import _requestlog as requestlog
from ._registry_http import (
    add_api_version,
    after_body,
    challenge,
    error_response,
    handle_database_unavailable,
    handle_registry_error,
    handle_storage_error,
    handle_unexpected,
)

log = logging.getLogger("flask_dependency_proxy")

bp = Blueprint("dependency_proxy_registry", __name__)
bp.register_error_handler(RegistryError, handle_registry_error)
bp.register_error_handler(DatabaseUnavailable, handle_database_unavailable)
bp.register_error_handler(StorageError, handle_storage_error)
bp.register_error_handler(Exception, handle_unexpected)
bp.after_request(add_api_version)
bp.before_request(requestlog.begin)
bp.after_request(requestlog.finish)

_PULL_METHODS = ("GET", "HEAD")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: Header that marks a manifest served from the cache because upstream failed.
STALE_HEADER = "X-Dependency-Proxy-Stale"
#: Header that says what the group's signature policy found for a manifest.
SIGNATURE_HEADER = "X-Dependency-Proxy-Signature"
#: Header that marks a tag's previous manifest, served while upstream's new digest is in
#: cooldown: ``pending="sha256:..."; release-at="2026-03-01T12:00:00Z"``.
COOLDOWN_HEADER = "X-Dependency-Proxy-Cooldown"


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _authenticate(name: str | None = None) -> Principal:
    """The principal of the request's token: the first check on every registry route,
    before the path or reference is parsed, so an anonymous client always gets the
    challenge that starts its login, whatever it asked for."""
    try:
        return state(None).access.principal_for_token(_bearer_token())
    except RegistryError as error:
        # The scope tells clients which token to ask for on the retry; a malformed
        # name gets a challenge without one, never the name echoed back.
        error.headers.setdefault("WWW-Authenticate", challenge(_pull_scope(name)))
        raise


def _pull_scope(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return f"repository:{parse_proxy_path(name).repository}:pull"
    except RegistryError:
        return None


def _refuse_writes() -> None:
    if request.method not in _PULL_METHODS:
        raise RegistryError(ErrorCode.UNSUPPORTED, "the dependency proxy is read-only")


@bp.route("/v2/", methods=_ALL_METHODS)
@bp.route("/v2", methods=_ALL_METHODS)
def base() -> Response:
    """API version check: 200 for a valid token, else the challenge that starts a login."""
    _authenticate()
    _refuse_writes()
    return Response("{}", mimetype="application/json")


@bp.route("/v2/<path:name>/manifests/<reference>", methods=_ALL_METHODS)
def manifest(name: str, reference: str) -> Response:
    principal = _authenticate(name)
    _refuse_writes()
    path = parse_proxy_path(name)
    validate_reference(reference)
    requestlog.note_target(path.group_path, path.image, reference)
    requestlog.note_principal(principal)
    group = state(None).access.authorize_pull(principal, path.group_path)
    cache = state(None).cache
    try:
        result = cache.get_manifest(
            group.id, path, reference, merge_accept(request.headers.getlist("Accept"))
        )
        signature = _check_signature(group.id, path, reference, result)
    except PullRefused as refused:
        requestlog.note_refusal(group.id, refused.outcome, refused.digest)
        raise
    finally:
        cache.finish_request()
    requestlog.note_manifest(group.id, result.outcome, result.digest)
    response = Response(result.content, mimetype=result.media_type)
    if signature is not None:
        _mark_signature(response, signature)
    response.headers["Docker-Content-Digest"] = result.digest
    response.headers["ETag"] = f'"{result.digest}"'
    response.headers["Content-Length"] = str(len(result.content))
    if result.stale:
        _mark_stale(response)
    if result.pending is not None:
        release_at = result.pending.release_at.replace(microsecond=0).isoformat() + "Z"
        response.headers[COOLDOWN_HEADER] = (
            f'pending="{result.pending.digest}"; release-at="{release_at}"'
        )
    return response


def _check_signature(
    group_id: int, path: ProxyPath, reference: str, result: ManifestResult
) -> Decision | None:
    """The group's signature policy on this manifest; an ``enforce`` policy refuses one
    without a valid signature from a trusted signer with ``403 DENIED`` and the reason."""
    gate = state(None).signatures
    if gate is None:
        return None
    decision = gate.check(state(None).cache, group_id, path, reference, result)
    if decision is not None and decision.refused:
        verdict = decision.verdict
        requestlog.note_refusal(group_id, "refused", result.digest)
        raise RegistryError(
            ErrorCode.DENIED,
            f"the group's signature policy refuses {path.image}@{result.digest}:"
            f" {verdict.status.value} ({verdict.reason})",
            {"digest": result.digest, "signature": verdict.status.value},
        )
    return decision


def _mark_signature(response: Response, decision: Decision) -> None:
    """What the policy found, for clients and proxies in front: ``verified``,
    ``unsigned`` or ``invalid`` (served in ``warn`` mode)."""
    verdict = decision.verdict
    response.headers[SIGNATURE_HEADER] = verdict.status.value
    detail = verdict.signer if verdict.status is Status.VERIFIED else verdict.reason
    if detail:
        text = detail.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")
        response.headers[f"{SIGNATURE_HEADER}-Detail"] = text[:300]


def _mark_stale(response: Response) -> None:
    """Served from the cache because upstream could not be asked."""
    response.headers[STALE_HEADER] = "true"
    response.headers["Warning"] = '110 - "Response is Stale"'


#: Largest page of a tag list; a client asking for more gets this many and a ``Link``.
MAX_TAGS_PER_PAGE = 1000


@bp.route("/v2/<path:name>/tags/list", methods=_ALL_METHODS)
def tags(name: str) -> Response:
    """Upstream's tags for the image, ``n`` per page after ``last``, with a ``Link`` to
    the next page as the distribution spec paginates; the group's cached tags, marked
    stale, while upstream cannot answer."""
    principal = _authenticate(name)
    _refuse_writes()
    path = parse_proxy_path(name)
    n, last = _pagination()
    requestlog.note_target(path.group_path, path.image, "tags/list")
    group = state(None).access.authorize_pull(principal, path.group_path)
    cache = state(None).cache
    try:
        page = cache.list_tags(group.id, path, n, last)
    finally:
        cache.finish_request()
    body = json.dumps({"name": path.repository, "tags": list(page.tags)})
    response = Response(body, mimetype="application/json")
    if page.stale:
        _mark_stale(response)
    if page.next_last is not None:
        query = urlencode({**({"n": n} if n is not None else {}), "last": page.next_last})
        response.headers["Link"] = f'</v2/{path.repository}/tags/list?{query}>; rel="next"'
    return response


def _pagination() -> tuple[int | None, str | None]:
    """The ``n`` and ``last`` query parameters, validated; ``n`` at most
    :data:`MAX_TAGS_PER_PAGE`."""
    n_value = request.args.get("n")
    last = request.args.get("last") or None
    n = None
    if n_value is not None:
        number = ascii_int(n_value, max_digits=9)
        if number is None:
            raise RegistryError(
                ErrorCode.UNSUPPORTED, "n must be a non-negative integer", status=400
            )
        n = min(number, MAX_TAGS_PER_PAGE)
    if last is not None and not is_valid_tag(last):
        raise RegistryError(ErrorCode.TAG_INVALID, "last must be a tag", {"last": last[:200]})
    return n, last


#: A media type, as ``artifactType`` may name one (RFC 6838's restricted names).
_MEDIA_TYPE_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)


@bp.route("/v2/<path:name>/referrers/<digest>", methods=_ALL_METHODS)
def referrers(name: str, digest: str) -> Response:
    """The OCI referrers of a digest, as an image index, filtered by ``artifactType``
    (then with ``OCI-Filters-Applied``), from upstream or, while it is down, the cache."""
    principal = _authenticate(name)
    _refuse_writes()
    path = parse_proxy_path(name)
    validate_digest(digest)
    artifact_type = request.args.get("artifactType") or None
    if artifact_type is not None and not _MEDIA_TYPE_RE.fullmatch(artifact_type):
        raise RegistryError(
            ErrorCode.UNSUPPORTED,
            "artifactType must be a media type",
            {"artifactType": artifact_type[:200]},
            status=400,
        )
    requestlog.note_target(path.group_path, path.image, f"referrers/{digest}")
    group = state(None).access.authorize_pull(principal, path.group_path)
    cache = state(None).cache
    try:
        found = cache.get_referrers(group.id, path, digest, artifact_type)
    finally:
        cache.finish_request()
    response = Response(found.index(), mimetype=MEDIA_TYPE_OCI_INDEX)
    if found.filtered:
        response.headers["OCI-Filters-Applied"] = "artifactType"
    if found.stale:
        _mark_stale(response)
    return response


@bp.route("/v2/<path:name>/blobs/<digest>", methods=_ALL_METHODS)
def blob(name: str, digest: str) -> Response:
    principal = _authenticate(name)
    _refuse_writes()
    path = parse_proxy_path(name)
    validate_digest(digest)
    requestlog.note_target(path.group_path, path.image, digest)
    group = state(None).access.authorize_pull(principal, path.group_path)
    try:
        result = _find_blob(group, path, digest)
        response = _blob_response(result)
    except FileNotFoundError:
        # Cleanup removed the file between the lookup and the open: fetch it again.
        result = _find_blob(group, path, digest)
        try:
            response = _blob_response(result)
        except FileNotFoundError as exc:
            # Removed again (a cleanup without a grace period, in a loop): the client
            # retries, as after any outage.
            raise RegistryError(
                ErrorCode.UNAVAILABLE, "the blob was removed while it was served; retry"
            ) from exc
    requestlog.note_blob(group.id, result.outcome, result.size)
    if result.upstream_status is not None:
        # The blob GET ran in the fetch's own thread, outside this request.
        requestlog.note_upstream_status(result.upstream_status)
    return _cut_off_stalled_clients(response)


def _cut_off_stalled_clients(response: Response) -> Response:
    """Bound how long one write of the body may wait for the client.

    A client that stops reading would otherwise hold its connection (and, on a
    threaded server, a thread) for as long as it stays connected. The timeout is set on
    the connection's socket where the server exposes it and is lifted again when the
    response ends, so it never applies to the next request on a kept-alive connection.
    """
    seconds = state(None).config.client_send_timeout_seconds
    sock = request.environ.get("gunicorn.socket")
    if not seconds or sock is None or request.method == "HEAD":
        return response
    try:
        sock.settimeout(seconds)
    except OSError:  # already closed by the client
        return response

    def lift() -> None:
        with contextlib.suppress(OSError):
            sock.settimeout(None)

    after_body(response, lift)
    return response


def _find_blob(group: Group, path: ProxyPath, digest: str) -> BlobResult:
    cache = state(None).cache
    try:
        if request.method == "HEAD":
            return BlobResult(digest=digest, size=cache.head_blob(group.id, path, digest))
        return cache.get_blob(group.id, path, digest)
    finally:
        # The connection goes back to the pool before a single byte is sent.
        cache.finish_request()


def _blob_response(result: BlobResult) -> Response:
    accel_prefix = state(None).config.x_accel_redirect_prefix
    match result.location:
        case LocalFile(relative=relative) if accel_prefix is not None:
            # nginx serves the file (sendfile, ranges) from an internal location.
            response = Response(b"", mimetype="application/octet-stream")
            response.headers["X-Accel-Redirect"] = accel_prefix + relative
        case LocalFile(path=path):
            response = _send_blob_file(path)
        case Redirect(url=url):
            # Clients fetch the bytes from the object store (a presigned URL), as they
            # do from Docker Hub's CDN; the URL grants this one blob for a short time.
            response = Response(b"", status=307, mimetype="application/octet-stream")
            response.headers["Location"] = url
            response.headers["Cache-Control"] = "no-store"
        case ByteStream() as stored:
            response = Response(
                _opened(stored), mimetype="application/octet-stream", direct_passthrough=True
            )
            response.headers["Content-Length"] = str(stored.size)
        case Following(size=size, chunks=chunks):
            # A miss: the bytes of the fetch, as they arrive and are verified.
            response = Response(
                _primed(chunks, result.digest),
                mimetype="application/octet-stream",
                direct_passthrough=True,
            )
            if size is not None:
                response.headers["Content-Length"] = str(size)
        case None:
            # A HEAD: the size alone.
            response = Response(b"", mimetype="application/octet-stream")
            if result.size is not None:
                response.headers["Content-Length"] = str(result.size)
    response.headers["Docker-Content-Digest"] = result.digest
    response.headers["ETag"] = f'"{result.digest}"'
    return response


def _send_blob_file(path: str) -> Response:
    """A cached blob, with ``Range`` (206) and conditional requests answered.

    By default the file goes out in large chunks rather than through the server's
    ``sendfile``: the client then copies from buffers the worker just wrote, not from the
    page cache, which keeps a CPU-bound client (hashing, unpacking) at full speed.
    """
    environ = request.environ
    chunk_size = state(None).config.blob_chunk_size
    if chunk_size:
        environ = {**environ, "wsgi.file_wrapper": _chunked_file_wrapper(chunk_size)}
    return send_file(  # type: ignore[return-value]
        path,
        environ,
        mimetype="application/octet-stream",
        conditional=True,
        etag=False,
        max_age=31536000,
        use_x_sendfile=current_app.config["USE_X_SENDFILE"],
        response_class=current_app.response_class,
    )


@functools.cache
def _chunked_file_wrapper(chunk_size: int) -> t.Callable[[t.IO[bytes], int], FileWrapper]:
    return lambda file, _buffer_size: FileWrapper(file, chunk_size)


def _primed(stream: t.Iterator[bytes], digest: str) -> t.Iterator[bytes]:
    """Wait for the first bytes before the response starts, so a fetch that fails at
    once is answered with a registry error. A fetch that breaks later ends the response
    early: the client sees a short transfer (and retries), never a wrong blob.

    ``stream`` holds the end of the blob back until its digest is verified, so a small
    blob that fails its digest is always answered here, with a registry error.
    """
    try:
        first = next(stream, b"")
    except FetchFailed as exc:
        log.warning("transfer of %s failed before the first byte: %s", digest, exc)
        if exc.reason == "storage":
            raise storage_unavailable() from exc
        if isinstance(exc.__cause__, BlobTooLarge):
            cause = exc.__cause__
            raise blob_too_large(cause.digest, cause.size, cause.limit) from exc
        message = {
            "digest_mismatch": "upstream sent content that does not match its digest",
        }.get(exc.reason, "the upstream transfer failed")
        raise RegistryError(ErrorCode.UNAVAILABLE, message) from exc

    def rest() -> t.Iterator[bytes]:
        try:
            yield first
            yield from stream
        except FetchFailed as exc:
            log.warning("aborting response for %s: %s", digest, exc)
            raise

    return rest()


def _opened(location: ByteStream) -> t.Iterator[bytes]:
    """Open a streamed blob before the response starts, so a blob removed meanwhile is
    fetched again (``FileNotFoundError`` reaches the view) rather than cut short."""
    chunks = location.open()
    first = next(chunks, b"")

    def rest() -> t.Iterator[bytes]:
        yield first
        yield from chunks

    return rest()


@bp.route("/v2/<path:rest>", methods=_ALL_METHODS)
def unknown(rest: str) -> Response:
    """Everything else under /v2/: catalog, uploads, malformed paths."""
    _authenticate()
    _refuse_writes()
    if "/blobs/uploads" in f"/{rest}":
        raise RegistryError(ErrorCode.UNSUPPORTED, "the dependency proxy is read-only")
    return error_response(RegistryError(ErrorCode.NAME_UNKNOWN, detail={"path": rest[:200]}))
