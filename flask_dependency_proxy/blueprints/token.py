"""``GET /jwt/auth``: trades a platform credential for a short-lived registry token."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, Response, jsonify, request

from ..database import DatabaseUnavailable
from ..errors import ErrorCode, RegistryError
from ..extension import state
from ._registry_http import (
    SERVICE,
    add_api_version,
    handle_database_unavailable,
    handle_registry_error,
    handle_unexpected,
)

bp = Blueprint("dependency_proxy_token", __name__)
bp.register_error_handler(RegistryError, handle_registry_error)
bp.register_error_handler(DatabaseUnavailable, handle_database_unavailable)
bp.register_error_handler(Exception, handle_unexpected)
bp.after_request(add_api_version)

#: Longest username and secret read from a Basic header; anything longer is refused unread.
_MAX_CREDENTIAL_LENGTH = 1024


@bp.route("/jwt/auth", methods=["GET"])
def auth() -> Response:
    service = request.args.get("service")
    if service is not None and service != SERVICE:
        raise RegistryError(ErrorCode.NAME_UNKNOWN, "unknown service", status=404)
    credentials = request.authorization
    if credentials is None or credentials.type != "basic":
        raise RegistryError(ErrorCode.UNAUTHORIZED, "HTTP Basic credentials required")
    username, secret = credentials.username or "", credentials.password or ""
    if (
        not username
        or not secret
        or len(username) > _MAX_CREDENTIAL_LENGTH
        or len(secret) > _MAX_CREDENTIAL_LENGTH
    ):
        raise RegistryError(ErrorCode.UNAUTHORIZED, "invalid username or password")
    proxy = state(None)
    principal = proxy.access.login(username, secret, request.remote_addr)
    token, claims = proxy.issuer.issue(principal.subject)
    issued = dt.datetime.fromtimestamp(claims.issued_at, dt.UTC)
    return jsonify(
        token=token,
        access_token=token,
        expires_in=claims.expires_at - claims.issued_at,
        issued_at=issued.isoformat().replace("+00:00", "Z"),
    )
