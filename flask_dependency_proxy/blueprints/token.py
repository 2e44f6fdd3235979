"""``/jwt/auth``: trades a platform credential for a short-lived registry token.

Both forms of the Docker token protocol:

- ``GET`` with HTTP Basic, which every client speaks. ``offline_token=true`` (what
  ``docker login`` sends) also asks for a refresh token, which docker then stores as
  its identity token instead of the password.
- ``POST`` with the OAuth2 form: ``grant_type=password`` (containerd's first choice) or
  ``grant_type=refresh_token`` (docker and containers/image holding an identity token).
  ``access_type=offline`` asks for a refresh token. Its errors carry OAuth2's ``error``
  and ``error_description`` beside the registry envelope, so either kind of client can
  read them.

A refresh costs no password hash: it checks a signature, then asks the host to resolve
the token's subject again, so a blocked user or a revoked token cannot refresh.
"""

from __future__ import annotations

import datetime as dt
import typing as t

from flask import Blueprint, Response, json, jsonify, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from .._state import ProxyState, state
from ..auth.tokens import MAX_TOKEN_LENGTH, InvalidToken, RefreshTokenIssuer
from ..models.database import DatabaseUnavailable
from ..oci.errors import ErrorCode, RegistryError
from . import _requestlog as requestlog
from ._bodies import bound_body
from ._names import scope_group
from ._registry_http import (
    SERVICE,
    add_api_version,
    database_unavailable,
    error_response,
    handle_unexpected,
)

if t.TYPE_CHECKING:
    from ..host import Principal

bp = Blueprint("dependency_proxy_token", __name__)
bp.after_request(add_api_version)
bp.before_request(requestlog.begin)
bp.after_request(requestlog.finish)

#: Longest username and secret read; anything longer is refused unchecked.
_MAX_CREDENTIAL_LENGTH = 1024
#: Largest ``POST`` body read. A token request is a few hundred bytes.
_MAX_FORM_BYTES = 16 * 1024
bp.before_request(bound_body(_MAX_FORM_BYTES))
#: Most ``scope`` fields, their longest total, and the longest ``client_id`` read.
_MAX_SCOPES = 64
_MAX_SCOPE_LENGTH = 8 * 1024
_MAX_CLIENT_ID_LENGTH = 256

#: OAuth2 ``error`` (RFC 6749, section 5.2) for the errors a login can end in.
_OAUTH_ERRORS = {
    ErrorCode.UNAUTHORIZED: "invalid_grant",
    ErrorCode.DENIED: "invalid_scope",
    ErrorCode.TOOMANYREQUESTS: "temporarily_unavailable",
    ErrorCode.UNAVAILABLE: "temporarily_unavailable",
}


class TokenRequestError(RegistryError):
    """A token request refused for its form, with the OAuth2 ``error`` that says why.

    :param oauth_error: ``invalid_request``, ``unsupported_grant_type``, ``invalid_grant``.
    """

    def __init__(
        self,
        oauth_error: str,
        message: str,
        *,
        code: ErrorCode = ErrorCode.DENIED,
        status: int = 400,
    ) -> None:
        super().__init__(code, message, status=status)
        self.oauth_error = oauth_error


def _token_error_response(error: RegistryError) -> Response:
    """The registry envelope; on ``POST`` with OAuth2's fields beside it."""
    response = error_response(error)
    if request.method == "POST":
        body = error.as_dict()
        body["error"] = getattr(error, "oauth_error", None) or _OAUTH_ERRORS.get(
            error.code, "invalid_request"
        )
        body["error_description"] = error.message
        response.set_data(json.dumps(body))
    return response


@bp.errorhandler(RegistryError)
def _handle_registry_error(error: RegistryError) -> Response:
    return _token_error_response(error)


@bp.errorhandler(RequestEntityTooLarge)
def _handle_too_large(error: RequestEntityTooLarge) -> Response:
    return _token_error_response(
        TokenRequestError("invalid_request", "the token request is too large", status=413)
    )


@bp.errorhandler(DatabaseUnavailable)
def _handle_database_unavailable(error: DatabaseUnavailable) -> Response:
    # The database phase has logged the outage already (once, not per request).
    return _token_error_response(database_unavailable())


bp.register_error_handler(Exception, handle_unexpected)


# -- GET: HTTP Basic ----------------------------------------------------------------------


@bp.route("/jwt/auth", methods=["GET"])
def auth() -> Response:
    _check_service(request.args.getlist("service"))
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
    offline = request.args.get("offline_token", "").lower() == "true"
    return _token_response(
        proxy, principal, refresh_token=_offline_token(proxy, principal, offline)
    )


# -- POST: the OAuth2 form ----------------------------------------------------------------


@bp.route("/jwt/auth", methods=["POST"])
def oauth_token() -> Response:
    form = _read_form()
    _check_service(form.getlist("service"))
    scopes = form.getlist("scope")
    if len(scopes) > _MAX_SCOPES or sum(len(scope) + 1 for scope in scopes) > _MAX_SCOPE_LENGTH:
        raise TokenRequestError("invalid_request", "scope is too long")
    client_ids = form.getlist("client_id")
    if len(client_ids) > 1 or any(len(c) > _MAX_CLIENT_ID_LENGTH for c in client_ids):
        raise TokenRequestError("invalid_request", "client_id is malformed or too long")
    offline = form.get("access_type") == "offline"
    grant_type = _field(form, "grant_type", 64)
    proxy = state(None)
    if grant_type == "password":
        username = _field(form, "username", _MAX_CREDENTIAL_LENGTH)
        password = _field(form, "password", _MAX_CREDENTIAL_LENGTH)
        principal = proxy.access.login(username, password, request.remote_addr)
        refresh_token = _offline_token(proxy, principal, offline)
    elif grant_type == "refresh_token":
        presented = _field(form, "refresh_token", MAX_TOKEN_LENGTH)
        principal = _redeem(proxy, presented)
        # The spec: a refresh answers the same refresh token, never a new one.
        refresh_token = presented if offline else None
    else:
        raise TokenRequestError(
            "unsupported_grant_type",
            "grant_type must be password or refresh_token",
            code=ErrorCode.UNSUPPORTED,
        )
    granted = _granted_scope(proxy, principal, scopes)
    return _token_response(proxy, principal, refresh_token=refresh_token, scope=granted)


@bp.route("/jwt/auth", methods=["PUT", "PATCH", "DELETE"])
def other_methods() -> Response:
    raise RegistryError(
        ErrorCode.UNSUPPORTED,
        "the token endpoint answers GET and POST",
        headers={"Allow": "GET, HEAD, POST"},
    )


def _read_form() -> MultiDict[str, str]:
    """The form, read only up to :data:`_MAX_FORM_BYTES` (the blueprint's
    :func:`~._bodies.bound_body` hook caps the input before this reads it)."""
    return request.form


def _granted_scope(proxy: ProxyState, principal: Principal, requested: list[str]) -> str | None:
    """What of the requested scopes the token grants: ``pull`` on repositories of groups
    the principal may pull through (on a mirror host, Docker Hub's names of its group),
    nothing else (no ``push``, no catalog). ``None``
    when no scope was asked for; an empty string when none was granted.

    The answer must not claim more than the token allows (RFC 6749, section 5.1): a
    client would take a ``push`` it was never given for granted.
    """
    if not requested:
        return None
    granted: list[str] = []
    for item in " ".join(requested).split():
        kind, _, rest = item.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or "pull" not in actions.split(","):
            continue
        try:
            proxy.access.authorize_pull(principal, scope_group(name))
        except RegistryError:
            continue
        scope = f"repository:{name}:pull"
        if scope not in granted:
            granted.append(scope)
    return " ".join(granted)


def _field(form: MultiDict[str, str], name: str, max_length: int) -> str:
    """A required field, given once, not empty, at most ``max_length`` characters."""
    values = form.getlist(name)
    if len(values) != 1 or not values[0]:
        raise TokenRequestError("invalid_request", f"{name} is required, once")
    if len(values[0]) > max_length:
        raise TokenRequestError("invalid_request", f"{name} is too long")
    return values[0]


def _check_service(services: list[str]) -> None:
    if any(service != SERVICE for service in services):
        raise TokenRequestError(
            "invalid_request", "unknown service", code=ErrorCode.NAME_UNKNOWN, status=404
        )


# -- refresh tokens -----------------------------------------------------------------------


def _refresh_issuer(proxy: ProxyState) -> RefreshTokenIssuer | None:
    """``None`` when refresh tokens are turned off."""
    ttl = proxy.config.refresh_token_ttl_seconds
    return proxy.issuer.refresh_tokens(ttl) if ttl else None


def _offline_token(proxy: ProxyState, principal: Principal, offline: bool) -> str | None:
    """A new refresh token for ``principal`` when the client asked for offline access."""
    issuer = _refresh_issuer(proxy)
    if not offline or issuer is None:
        return None
    return issuer.issue(principal.subject)[0]


def _redeem(proxy: ProxyState, refresh_token: str) -> Principal:
    """The principal a refresh token names, resolved by the host now.

    :raises TokenRequestError: 401 ``invalid_grant`` for a token that is not a genuine,
        unexpired refresh token, or whose principal the host no longer accepts.
    """
    issuer = _refresh_issuer(proxy)
    if issuer is None:
        raise TokenRequestError(
            "unsupported_grant_type", "refresh tokens are turned off", code=ErrorCode.UNSUPPORTED
        )
    try:
        claims = issuer.verify(refresh_token)
    except InvalidToken as exc:
        raise TokenRequestError(
            "invalid_grant",
            f"invalid refresh token ({exc}); log in again",
            code=ErrorCode.UNAUTHORIZED,
            status=401,
        ) from None
    with proxy.database.phase("loading a refresh token's principal"):
        principal = proxy.host.load_principal(claims.subject)
    if principal is None:
        raise TokenRequestError(
            "invalid_grant",
            "the credential behind this refresh token is no longer valid; log in again",
            code=ErrorCode.UNAUTHORIZED,
            status=401,
        )
    return principal


# -- the answer ---------------------------------------------------------------------------


def _token_response(
    proxy: ProxyState,
    principal: Principal,
    *,
    refresh_token: str | None = None,
    scope: str | None = None,
) -> Response:
    token, claims = proxy.issuer.issue(principal.subject)
    issued = dt.datetime.fromtimestamp(claims.issued_at, dt.UTC)
    body: dict[str, t.Any] = {
        "token": token,
        "access_token": token,
        "expires_in": claims.expires_at - claims.issued_at,
        "issued_at": issued.isoformat().replace("+00:00", "Z"),
    }
    if scope is not None:
        body["scope"] = scope
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    response = jsonify(body)
    # Tokens are credentials: no cache may keep them (RFC 6749, section 5.1).
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response
