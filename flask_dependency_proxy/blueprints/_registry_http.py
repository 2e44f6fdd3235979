"""Registry response plumbing shared by the registry and token blueprints."""

from __future__ import annotations

import logging
import re
import typing as t

from flask import Response, current_app, json, request
from werkzeug.exceptions import SecurityError
from werkzeug.wsgi import ClosingIterator

from .._state import state
from ..models.database import RETRY_AFTER_SECONDS, DatabaseUnavailable, is_unavailable
from ..oci.errors import ErrorCode, RegistryError, storage_unavailable
from ..stores.base import StorageError
from ._names import mirror_base_url

log = logging.getLogger("flask_dependency_proxy")

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
#: The ``service`` of the token challenge, as docker clients echo it back to /jwt/auth.
SERVICE = "dependency_proxy"
#: Registry clients would take a JSON error served as ``text/html`` for a page.
NOSNIFF_HEADER = ("X-Content-Type-Options", "nosniff")
#: Paths the registry and token blueprints answer, for errors raised before routing.
_REGISTRY_PATHS = ("/v2", "/jwt/auth")


def external_url() -> str:
    """The URL clients reach this app at: configured, or derived from the request.

    Derived, it is the request's scheme and Host, which ``X-Forwarded-Proto`` and
    ``X-Forwarded-Host`` set only with ``DEPENDENCY_PROXY_TRUSTED_PROXIES`` (through
    ``ProxyFix``), and which Flask has checked against ``TRUSTED_HOSTS`` when that is set.
    """
    configured = state(None).config.external_url
    return configured or request.host_url.rstrip("/")


def challenge(scope: str | None = None) -> str:
    """The ``WWW-Authenticate`` of a ``401``: the token realm on this app's URL, or on the
    request's own host name when that is a Docker Hub mirror's (the one name of the
    app its clients know)."""
    base = mirror_base_url() or external_url()
    value = f'Bearer realm="{base}/jwt/auth",service="{SERVICE}"'
    if scope:
        value += f',scope="{scope}"'
    return value


def error_response(error: RegistryError, scope: str | None = None) -> Response:
    response = Response(
        json.dumps(error.as_dict()), status=error.status, mimetype="application/json"
    )
    response.headers.update(error.headers)
    if error.code is ErrorCode.UNAUTHORIZED:
        response.headers.setdefault("WWW-Authenticate", challenge(scope))
    if error.code is ErrorCode.DENIED and request.method == "HEAD":
        # A HEAD answer has no body, and containerd resolves a tag with HEAD and shows
        # only the status line: the reason phrase carries why (a signature policy, a
        # block, a cooldown), as printable ASCII.
        reason = _UNPRINTABLE.sub(" ", error.message.encode("ascii", "replace").decode())
        response.status = f"{error.status} {reason[:300]}"
    return response


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def handle_registry_error(error: RegistryError) -> Response:
    return error_response(error)


def handle_storage_error(error: StorageError) -> Response:
    """503 for a blob store that failed a read (an object store that is down)."""
    log.error("blob store failed: %s (path %s, errno %s)", error, error.path, error.errno_name)
    return error_response(storage_unavailable())


def database_unavailable() -> RegistryError:
    """503 ``UNAVAILABLE`` for a request the database failed (down, hung, pool exhausted)."""
    return RegistryError(
        ErrorCode.UNAVAILABLE,
        "the dependency proxy's database is unavailable; try again later",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def handle_database_unavailable(error: DatabaseUnavailable) -> Response:
    # The database phase has logged the outage already (once, not per request).
    return error_response(database_unavailable())


def handle_unexpected(error: Exception) -> Response:
    """Anything unforeseen is logged and answered in the registry envelope, never HTML."""
    from werkzeug.exceptions import HTTPException

    if is_unavailable(error):
        # A database error outside a database phase: still an outage, not a bug.
        log.warning("database unavailable on %s %s: %s", request.method, request.path, error)
        return error_response(database_unavailable())

    if isinstance(error, HTTPException):
        code = {
            400: ErrorCode.NAME_INVALID,
            404: ErrorCode.NAME_UNKNOWN,
            405: ErrorCode.UNSUPPORTED,
            416: ErrorCode.RANGE_INVALID,
        }.get(error.code or 500, ErrorCode.UNKNOWN)
        return error_response(RegistryError(code, error.description, status=error.code))
    current_app.logger.exception("unexpected error on %s %s", request.method, request.path)
    return error_response(RegistryError(ErrorCode.UNKNOWN))


def add_api_version(response: Response) -> Response:
    """The headers of every registry and token response: the API version, and ``nosniff``."""
    response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
    response.headers[NOSNIFF_HEADER[0]] = NOSNIFF_HEADER[1]
    return response


def is_registry_path(path: str) -> bool:
    return any(path == prefix or path.startswith(f"{prefix}/") for prefix in _REGISTRY_PATHS)


def refuse_untrusted_host() -> Response | None:
    """App-wide ``before_request``: a Host outside ``TRUSTED_HOSTS`` on a registry path gets
    a registry error instead of Flask's HTML page, and so does a scheme or Host that
    cannot make the token realm (a trusted proxy forwarding ``ftp``, or a Host with a
    quote in it) when the realm is derived from the request.

    Flask finds the untrusted Host before routing, so no blueprint handler sees it; other
    paths keep the host app's own answer.
    """
    if not is_registry_path(request.path):
        return None
    if isinstance(request.routing_exception, SecurityError):
        message = "the Host header names a host this registry does not serve"
    elif state(None).config.external_url is None and not _usable_for_realm(
        request.scheme, request.host
    ):
        message = "the request's scheme or Host header cannot be a registry URL"
    else:
        return None
    return add_api_version(error_response(RegistryError(ErrorCode.DENIED, message, status=400)))


#: A DNS name or an IPv4 address, or an IPv6 address in brackets, with an optional port.
_REALM_HOST = re.compile(
    r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?"
)


def _usable_for_realm(scheme: str, host: str) -> bool:
    match = _REALM_HOST.fullmatch(host)
    if scheme not in ("http", "https") or match is None:
        return False
    port = match["port"]
    return port is None or 0 < int(port) <= 65535


def after_body(response: Response, callback: t.Callable[[], None]) -> None:
    """Run ``callback`` once the server is done with the body: sent, or the client gone.

    Werkzeug runs ``call_on_close`` hooks only around bodies it wraps itself; a
    direct-passthrough body (a blob file the server may ``sendfile``, a fetch's stream)
    goes to the server as it is, so there the callback joins the body's own ``close``,
    which the server calls.
    """
    status = response.status_code
    if (
        not response.direct_passthrough
        or request.method == "HEAD"
        or status < 200
        or status in (204, 304)
    ):
        response.call_on_close(callback)
        return
    body: t.Any = response.response
    if not hasattr(body, "__dict__"):  # a generator: wrapping it costs nothing per chunk
        response.response = ClosingIterator(body, [callback])
        return
    previous = getattr(body, "close", None)

    def close() -> None:
        try:
            if previous is not None:
                previous()
        finally:
            callback()

    # A file wrapper keeps its type, so the server still recognises it for sendfile.
    body.close = close
