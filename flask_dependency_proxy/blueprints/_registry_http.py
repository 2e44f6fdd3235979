"""Registry response plumbing shared by the registry and token blueprints."""

from __future__ import annotations

import logging

from flask import Response, current_app, json, request

from ..database import RETRY_AFTER_SECONDS, DatabaseUnavailable, is_unavailable
from ..errors import ErrorCode, RegistryError
from ..extension import state

log = logging.getLogger("flask_dependency_proxy")

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
#: The ``service`` of the token challenge, as docker clients echo it back to /jwt/auth.
SERVICE = "dependency_proxy"


def external_url() -> str:
    """The URL clients reach this app at: configured, or derived from the request."""
    configured = state(None).config.external_url
    return configured or request.host_url.rstrip("/")


def challenge(scope: str | None = None) -> str:
    value = f'Bearer realm="{external_url()}/jwt/auth",service="{SERVICE}"'
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
    return response


def handle_registry_error(error: RegistryError) -> Response:
    return error_response(error)


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
    response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
    return response
