"""What every endpoint of the REST API shares: the blueprint, who asks and about which
group, errors and answers in JSON, the body and the query's page arguments.

An endpoint raises :class:`ApiError` (or lets :class:`~.._group_input.InvalidInput`
through, a 400 naming the fields) and returns :func:`json_response`; the handlers here
turn everything else, a database outage included, into a JSON error.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import typing as t
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, json, request
from werkzeug.exceptions import HTTPException

from ..._state import state
from ...auth.group_paths import GroupMoved, GroupPathTaken
from ...host import AuthFailure, Group, Principal
from ...models.database import RETRY_AFTER_SECONDS, DatabaseUnavailable, is_unavailable
from ...models.listings import DEFAULT_PER_PAGE, MAX_PER_PAGE
from ...oci.reference import GROUP_PATH_RE
from .._bodies import bound_body
from .._csrf import CSRF_HEADER, csrf_valid
from .._group_input import InvalidInput, WholeNumber

if t.TYPE_CHECKING:
    from ...admin.groups import GroupAdmin
    from ...models.listings import Page

bp = Blueprint("dependency_proxy_api", __name__, url_prefix="/api/v4/groups")

#: Every endpoint's route starts here.
ROUTE = "/<path:group_ref>/dependency_proxy"
#: Every route takes every method, so a wrong one is answered in JSON (see :func:`methods`).
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
_GROUP_ID = re.compile(r"[1-9][0-9]{0,17}")
_MAX_TOKEN_LENGTH = 1024
_MAX_BODY_BYTES = 64 * 1024
_MAX_PAGE = 100_000

# Before authentication: a body over the bound costs nothing, whoever sends it (413 from
# the HTTPException handler below).
bp.before_request(bound_body(_MAX_BODY_BYTES))


class ApiError(Exception):
    """An error answered as ``{"message": ...}`` (plus ``errors`` per field, if any)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}


def json_response(
    body: t.Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers.update(headers or {})
    response.headers["Cache-Control"] = "no-store"
    return response


def invalid(field: str, problem: str, *, prefix: str = "") -> ApiError:
    """A 400 about one field."""
    return ApiError(400, f"400 Bad request - {prefix}{problem}", errors={field: problem})


def settings_body(body: t.Any, fields: t.Sequence[str]) -> dict[str, t.Any]:
    """A ``PUT`` body of settings: a non-empty object naming only ``fields`` (an unknown
    field is refused, not ignored, so a misspelt setting never reads as saved)."""
    if not isinstance(body, dict) or not body:
        raise ApiError(400, f"400 Bad request - send an object with any of {', '.join(fields)}")
    unknown = [str(key)[:100] for key in body if key not in fields]
    if unknown:
        raise ApiError(
            400,
            f"400 Bad request - unknown fields: {', '.join(unknown)}",
            errors={key: "unknown field" for key in unknown},
        )
    return body


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    body: dict[str, t.Any] = {"message": error.message}
    if error.errors:
        body["errors"] = error.errors
    return json_response(body, error.status, error.headers)


@bp.errorhandler(InvalidInput)
def _invalid_input(error: InvalidInput) -> Response:
    return _api_error(ApiError(400, f"400 Bad request - {error.message}", errors=error.errors))


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    return json_response({"message": f"{status} {error.name}"}, status)


def _database_unavailable() -> Response:
    return json_response(
        {"message": "503 Service Unavailable - the database is unavailable; try again later"},
        503,
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@bp.errorhandler(DatabaseUnavailable)
def _database_error(error: DatabaseUnavailable) -> Response:
    return _database_unavailable()


@bp.errorhandler(Exception)
def _unexpected(error: Exception) -> Response:
    if is_unavailable(error):
        current_app.logger.warning(
            "database unavailable on %s %s: %s", request.method, request.path, error
        )
        return _database_unavailable()
    current_app.logger.exception("unexpected error on %s %s", request.method, request.path)
    return json_response({"message": "500 Internal Server Error"}, 500)


_View = t.TypeVar("_View", bound=t.Callable[..., Response])


def database_phase(view: _View) -> _View:
    """Run a view that only talks to the database as one bounded database phase."""

    @functools.wraps(view)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> Response:
        with state(None).database.phase(f"{request.method} {request.url_rule}"):
            return view(*args, **kwargs)

    return t.cast(_View, wrapper)


def admin() -> GroupAdmin:
    return state(None).group_admin


# -- authentication and the group -----------------------------------------------------------------


def _token() -> str | None:
    token = request.headers.get("PRIVATE-TOKEN")
    if token is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = value
    token = token.strip()
    if not token or len(token) > _MAX_TOKEN_LENGTH:
        raise ApiError(401, "401 Unauthorized")
    return token


def _principal() -> Principal:
    host = state(None).host
    token = _token()
    if token is not None:
        outcome = host.authenticate_api_token(token)
        if outcome is AuthFailure.INSUFFICIENT_SCOPE:
            # Checked at init_app: a scope-token, safe inside the quoted header value.
            scope = getattr(host, "api_scope_name", "api")
            raise ApiError(
                403,
                f"403 Forbidden - insufficient_scope: the token lacks the host's API scope"
                f" ('{scope}')",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
            )
        if not isinstance(outcome, Principal):
            raise ApiError(401, "401 Unauthorized")
        return outcome
    principal = host.current_principal()
    if principal is None:
        raise ApiError(401, "401 Unauthorized")
    if request.method not in ("GET", "HEAD") and not csrf_valid(request.headers.get(CSRF_HEADER)):
        # A browser sends the session cookie on its own; the token proves the page asked.
        raise ApiError(403, f"403 Forbidden - a session request must send {CSRF_HEADER}")
    return principal


def group(group_ref: str, *, claim: bool = False) -> Group:
    """The group an administrator of it asks about.

    404 for an unknown group and for one the principal may not even read; 403 for a
    member who may not administer it; 409 for a group whose id now names another path
    than the one recorded, and, with ``claim`` (a settings change), for a group whose
    path another group holds (:mod:`...auth.group_paths`).
    """
    principal = _principal()
    host = state(None).host
    if _GROUP_ID.fullmatch(group_ref):
        found = host.find_group_by_id(int(group_ref))
    elif len(group_ref) <= 1024 and GROUP_PATH_RE.fullmatch(group_ref):
        found = host.find_group(group_ref.lower())
    else:
        found = None
    if found is None:
        raise ApiError(404, "404 Group Not Found")
    if host.can_admin(principal, found):
        try:
            admin().admit(found, claim=claim)
        except (GroupMoved, GroupPathTaken) as problem:
            raise ApiError(409, f"409 Conflict - {problem}") from None
        return found
    if host.can_read(principal, found):
        raise ApiError(403, "403 Forbidden")
    raise ApiError(404, "404 Group Not Found")


def methods(*allowed: str) -> None:
    """Answer 405 in JSON (routing would answer the host's HTML)."""
    allowed_set = set(allowed) | ({"HEAD"} if "GET" in allowed else set())
    if request.method not in allowed_set:
        raise ApiError(
            405,
            "405 Method Not Allowed",
            headers={"Allow": ", ".join(sorted(allowed_set))},
        )


# -- input and output -----------------------------------------------------------------------------


def time(moment: dt.datetime | None) -> str | None:
    """A naive UTC moment as ``2024-05-01T12:00:00Z``."""
    if moment is None:
        return None
    return moment.replace(tzinfo=dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def json_body() -> t.Any:
    if request.mimetype != "application/json":
        raise ApiError(415, "415 Unsupported Media Type - send application/json")
    # At most _MAX_BODY_BYTES: the blueprint's bound_body hook caps the input.
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "400 Bad request - the body is not valid JSON") from None


def positive_int(name: str, default: int, maximum: int) -> int:
    """Query argument ``name``, ``default`` when absent or empty."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    rule = WholeNumber(1, maximum)
    number = rule.from_text(raw)
    if number is None:
        raise invalid(name, rule.problem, prefix=f"{name} ")
    return number


def page_args() -> tuple[int, int]:
    return (
        positive_int("page", 1, _MAX_PAGE),
        positive_int("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE),
    )


def paginated(page: Page[t.Any], body: list[dict[str, t.Any]]) -> Response:
    """``body``, one page of a listing, with the headers that lead to the others."""

    def url(number: int) -> str:
        args = request.args.to_dict()
        args.update(page=str(number), per_page=str(page.per_page))
        return f"{request.base_url}?{urlencode(args)}"

    last = max(page.total_pages, 1)
    links = [f'<{url(1)}>; rel="first"', f'<{url(last)}>; rel="last"']
    if page.next_page:
        links.insert(0, f'<{url(page.next_page)}>; rel="next"')
    if page.prev_page:
        links.insert(0, f'<{url(page.prev_page)}>; rel="prev"')
    headers = {
        "X-Total": str(page.total),
        "X-Total-Pages": str(page.total_pages),
        "X-Page": str(page.page),
        "X-Per-Page": str(page.per_page),
        "X-Next-Page": str(page.next_page or ""),
        "X-Prev-Page": str(page.prev_page or ""),
        "Link": ", ".join(links),
    }
    return json_response(body, 200, headers)
