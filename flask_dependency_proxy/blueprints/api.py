"""REST API under ``/api/v4/groups/<group>/dependency_proxy/``, for scripts.

``<group>`` is the group's numeric id or its URL-encoded full path (``org%2Fteam``).
Requests authenticate with a personal access token that has the ``api`` scope, sent as
``PRIVATE-TOKEN: <token>`` or ``Authorization: Bearer <token>``, or with the web
session; a session request that changes something also sends the page's CSRF token in
``X-CSRF-Token``. Every endpoint is for those who administer the group (owners by
default). Answers and errors are JSON; errors carry a ``message``.

- ``DELETE cache``: 202, schedules the group's cache for deletion; 409 within the
  purge cooldown.
- ``GET``/``PUT settings``: ``{"enabled", "cleanup_policy": {"enabled", "days"},
  "quota": {"limit_bytes"}}``; ``limit_bytes`` is ``null`` for no limit. Answers also
  carry ``quota.used_bytes`` and the instance's ``quota.policy``.
- ``GET manifests`` and ``GET blobs``: ``page`` and ``per_page`` (at most 100), with
  ``X-Total``, ``X-Total-Pages``, ``X-Page``, ``X-Per-Page``, ``X-Next-Page``,
  ``X-Prev-Page`` and ``Link`` headers. ``manifests`` also takes
  ``order_by=created_at|last_pulled|size`` (``size``: the image's), ``sort=desc|asc``
  and ``search=<part of an image name>``.
- ``DELETE images/<image>`` (``images/bitnami/redis``): 202, schedules the image's
  manifests, and the blobs no other image of the group references, for deletion; 400
  for a malformed name, 404 when the group has no such image cached.
- ``GET``/``PUT upstreams``: every upstream of the instance, those the group uses first
  in its order (``position`` from 1; ``null`` for one it does not use), with its
  ``url``, ``hosts``, ``credential_set`` and what this process last saw of it
  (``status``: ``last_status``, ``rate_limit_limit``, ``rate_limit_remaining``,
  ``down_until``). ``PUT {"order": ["ghcr", "dockerhub"]}`` narrows and reorders;
  ``{"order": null}`` goes back to every upstream in the instance's order.
- ``PUT upstreams/<name>/credentials`` ``{"username", "password"}`` keeps the group's
  own credential for that upstream (encrypted; never answered back);
  ``DELETE upstreams/<name>/credentials`` forgets it (204).

While the database is unavailable every endpoint answers 503 with ``Retry-After``
within ``DEPENDENCY_PROXY_DATABASE_TIMEOUT_SECONDS`` (see :mod:`..database`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import re
import typing as t
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, json, request
from werkzeug.exceptions import HTTPException

from .._state import state
from ..admin.lifecycle import PurgeTooSoon
from ..admin.usage_chart import UsageSummary
from ..cache.quota import MAX_GROUP_LIMIT_BYTES
from ..host import AuthFailure, Group, Principal
from ..models.admin import (
    DEFAULT_PER_PAGE,
    MAX_CLEANUP_DAYS,
    MAX_PER_PAGE,
    MAX_SEARCH_LENGTH,
    MIN_CLEANUP_DAYS,
    ORDER_BY,
    SORTS,
    BlobItem,
    CacheAdmin,
    ManifestItem,
    Page,
    Settings,
    valid_search,
)
from ..models.database import RETRY_AFTER_SECONDS, DatabaseUnavailable, is_unavailable
from ..models.quota import QuotaRecords
from ..models.tables import Status, utcnow
from ..models.upstreams import UpstreamListError, check_order, credential_problem
from ..models.usage import read_usage
from ..oci.reference import GROUP_PATH_RE, is_valid_image_name
from . import _group_upstreams as group_upstreams
from ._bodies import bound_body
from .pages import CSRF_HEADER, csrf_valid, image_prefix

bp = Blueprint("dependency_proxy_api", __name__, url_prefix="/api/v4/groups")

_ROUTE = "/<path:group_ref>/dependency_proxy"
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
_GROUP_ID = re.compile(r"[1-9][0-9]{0,17}")
_MAX_TOKEN_LENGTH = 1024
_MAX_BODY_BYTES = 64 * 1024
_MAX_PAGE = 100_000
_NUMBER = re.compile(r"[0-9]{1,9}")
_STATUS_NAMES = {Status.DEFAULT: "default", Status.PENDING_DESTRUCTION: "pending_destruction"}

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


def _json(body: t.Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers.update(headers or {})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    body: dict[str, t.Any] = {"message": error.message}
    if error.errors:
        body["errors"] = error.errors
    return _json(body, error.status, error.headers)


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    return _json({"message": f"{status} {error.name}"}, status)


def _database_unavailable() -> Response:
    return _json(
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
    return _json({"message": "500 Internal Server Error"}, 500)


_View = t.TypeVar("_View", bound=t.Callable[..., Response])


def _database_phase(view: _View) -> _View:
    """Run a view that only talks to the database as one bounded database phase."""

    @functools.wraps(view)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> Response:
        with state(None).database.phase(f"{request.method} {request.url_rule}"):
            return view(*args, **kwargs)

    return t.cast(_View, wrapper)


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
            raise ApiError(
                403,
                "403 Forbidden - insufficient_scope: the token needs the api scope",
                headers={"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="api"'},
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


def _group(group_ref: str) -> Group:
    """The group an administrator of it asks about.

    404 for an unknown group and for one the principal may not even read; 403 for a
    member who may not administer it.
    """
    principal = _principal()
    host = state(None).host
    if _GROUP_ID.fullmatch(group_ref):
        group = host.find_group_by_id(int(group_ref))
    elif len(group_ref) <= 1024 and GROUP_PATH_RE.fullmatch(group_ref):
        group = host.find_group(group_ref.lower())
    else:
        group = None
    if group is None:
        raise ApiError(404, "404 Group Not Found")
    if host.can_admin(principal, group):
        return group
    if host.can_read(principal, group):
        raise ApiError(403, "403 Forbidden")
    raise ApiError(404, "404 Group Not Found")


def _methods(*allowed: str) -> None:
    """Answer 405 in JSON (routing would answer the host's HTML)."""
    allowed_set = set(allowed) | ({"HEAD"} if "GET" in allowed else set())
    if request.method not in allowed_set:
        raise ApiError(
            405,
            "405 Method Not Allowed",
            headers={"Allow": ", ".join(sorted(allowed_set))},
        )


# -- serialisation --------------------------------------------------------------------------------


def _time(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _settings_body(group: Group, settings: Settings) -> dict[str, t.Any]:
    quota = QuotaRecords(lambda: state(None).metadata.session)
    return {
        "group_id": group.id,
        "group_full_path": group.full_path,
        "enabled": settings.enabled,
        "image_prefix": image_prefix(group),
        "cleanup_policy": {"enabled": settings.cleanup_enabled, "days": settings.cleanup_days},
        "cache_cleared_at": _time(settings.purged_at),
        "quota": {
            "limit_bytes": quota.limit(group.id),
            "used_bytes": quota.usage(group.id),
            "policy": state(None).config.quota_policy,
        },
    }


def _manifest_body(item: ManifestItem) -> dict[str, t.Any]:
    return {
        "id": item.id,
        "image": item.image,
        "tag": item.tag,
        "digest": item.digest,
        "media_type": item.media_type,
        "size": item.size,
        "image_size": item.image_size,
        "platforms": item.platforms,
        "status": _STATUS_NAMES[item.status],
        "created_at": _time(item.created_at),
        "updated_at": _time(item.updated_at),
        "last_read_at": _time(item.last_read_at),
    }


def _blob_body(item: BlobItem) -> dict[str, t.Any]:
    return {
        "id": item.id,
        "digest": item.digest,
        "size": item.size,
        "status": _STATUS_NAMES[item.status],
        "created_at": _time(item.created_at),
        "last_read_at": _time(item.last_read_at),
    }


def _admin() -> CacheAdmin:
    proxy = state(None)
    return CacheAdmin(lambda: proxy.metadata.session)


# -- pagination -----------------------------------------------------------------------------------


def _positive_int(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not _NUMBER.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise ApiError(
            400,
            f"400 Bad request - {name} must be a whole number from 1 to {maximum}",
            errors={name: f"must be a whole number from 1 to {maximum}"},
        )
    return int(raw)


def _page_args() -> tuple[int, int]:
    return (
        _positive_int("page", 1, _MAX_PAGE),
        _positive_int("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE),
    )


def _choice(name: str, allowed: tuple[str, ...]) -> str:
    raw = request.args.get(name) or allowed[0]
    if raw not in allowed:
        problem = f"must be one of {', '.join(allowed)}"
        raise ApiError(400, f"400 Bad request - {name} {problem}", errors={name: problem})
    return raw


def _listing_args() -> dict[str, t.Any]:
    """``order_by``, ``sort`` and ``search`` of a manifest listing, validated."""
    search = request.args.get("search", "")
    if not valid_search(search):
        problem = (
            f"must be at most {MAX_SEARCH_LENGTH} characters of image names"
            " (letters, digits, '.', '_', '-' and '/')"
        )
        raise ApiError(400, f"400 Bad request - search {problem}", errors={"search": problem})
    return {
        "order_by": _choice("order_by", ORDER_BY),
        "sort": _choice("sort", SORTS),
        "search": search or None,
    }


def _paginated(page: Page[t.Any], body: list[dict[str, t.Any]]) -> Response:
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
    return _json(body, 200, headers)


# -- settings input -------------------------------------------------------------------------------


def _strict_bool(value: t.Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _parse_settings(data: t.Any) -> dict[str, t.Any]:
    """Validate a settings update; every field is optional, unknown ones are errors."""
    if not isinstance(data, dict):
        raise ApiError(400, "400 Bad request - the body must be a JSON object")
    errors: dict[str, str] = {}
    changes: dict[str, t.Any] = {}
    for key in data:
        if key not in ("enabled", "cleanup_policy", "quota"):
            errors[str(key)[:100]] = "unknown field"
    if "enabled" in data:
        if _strict_bool(data["enabled"]) is None:
            errors["enabled"] = "must be true or false"
        else:
            changes["enabled"] = data["enabled"]
    if "cleanup_policy" in data:
        policy = data["cleanup_policy"]
        if not isinstance(policy, dict):
            errors["cleanup_policy"] = "must be an object with enabled and days"
        else:
            for key in policy:
                if key not in ("enabled", "days"):
                    errors[f"cleanup_policy.{str(key)[:100]}"] = "unknown field"
            if "enabled" in policy:
                if _strict_bool(policy["enabled"]) is None:
                    errors["cleanup_policy.enabled"] = "must be true or false"
                else:
                    changes["cleanup_enabled"] = policy["enabled"]
            if "days" in policy:
                days = policy["days"]
                if (
                    not isinstance(days, int)
                    or isinstance(days, bool)
                    or not MIN_CLEANUP_DAYS <= days <= MAX_CLEANUP_DAYS
                ):
                    errors["cleanup_policy.days"] = (
                        f"must be a whole number from {MIN_CLEANUP_DAYS} to {MAX_CLEANUP_DAYS}"
                    )
                else:
                    changes["cleanup_days"] = days
    if "quota" in data:
        _parse_quota(data["quota"], changes, errors)
    if errors:
        fields = ", ".join(sorted(errors))
        raise ApiError(400, f"400 Bad request - invalid fields: {fields}", errors=errors)
    if not changes:
        raise ApiError(
            400,
            "400 Bad request - give at least one of enabled, cleanup_policy.enabled,"
            " cleanup_policy.days, quota.limit_bytes",
        )
    return changes


def _parse_quota(quota: t.Any, changes: dict[str, t.Any], errors: dict[str, str]) -> None:
    """``{"limit_bytes": N}`` (``null`` lifts the limit) into ``changes["size_limit"]``."""
    if not isinstance(quota, dict):
        errors["quota"] = "must be an object with limit_bytes"
        return
    for key in quota:
        if key != "limit_bytes":
            errors[f"quota.{str(key)[:100]}"] = (
                "unknown field" if key not in ("used_bytes", "policy") else "cannot be set"
            )
    if "limit_bytes" not in quota:
        return
    limit = quota["limit_bytes"]
    if limit is None:
        changes["size_limit"] = None
    elif (
        not isinstance(limit, int)
        or isinstance(limit, bool)
        or not 1 <= limit <= MAX_GROUP_LIMIT_BYTES
    ):
        errors["quota.limit_bytes"] = (
            f"must be null (no limit) or a whole number of bytes from 1 to {MAX_GROUP_LIMIT_BYTES}"
        )
    else:
        changes["size_limit"] = limit


def _json_body() -> t.Any:
    if request.mimetype != "application/json":
        raise ApiError(415, "415 Unsupported Media Type - send application/json")
    # At most _MAX_BODY_BYTES: the blueprint's bound_body hook caps the input.
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "400 Bad request - the body is not valid JSON") from None


# -- endpoints ------------------------------------------------------------------------------------


@bp.route(f"{_ROUTE}/cache", methods=_ALL_METHODS)
@_database_phase
def cache(group_ref: str) -> Response:
    _methods("DELETE")
    group = _group(group_ref)
    try:
        result = state(None).lifecycle.purge(group.id)
    except PurgeTooSoon as exc:
        raise ApiError(
            409,
            f"409 Conflict - {exc}",
            headers={"Retry-After": str(exc.retry_after_seconds)},
        ) from None
    return _json(
        {
            "message": "202 Accepted",
            "scheduled_for_deletion": {"manifests": result.manifests, "blobs": result.blobs},
        },
        202,
    )


@bp.route(f"{_ROUTE}/settings", methods=_ALL_METHODS)
def settings(group_ref: str) -> Response:
    _methods("GET", "PUT")
    proxy = state(None)
    admin = _admin()
    with proxy.database.phase("API settings"):
        group = _group(group_ref)
        if request.method != "PUT":
            current = admin.settings(group.id, proxy.config.group_default_enabled)
            return _json(_settings_body(group, current))
    # The body is read between two phases: a slow client holds no connection.
    changes = _parse_settings(_json_body())
    with proxy.database.phase("API settings update"):
        if "size_limit" in changes:
            QuotaRecords(lambda: proxy.metadata.session).set_limit(
                group.id, changes.pop("size_limit"), proxy.config.group_default_enabled, utcnow()
            )
        if changes:
            admin.update_settings(group.id, proxy.config.group_default_enabled, utcnow(), **changes)
        updated = admin.settings(group.id, proxy.config.group_default_enabled)
        body = _settings_body(group, updated)
    if "enabled" in changes:
        proxy.access.forget()
    return _json(body)


@bp.route(f"{_ROUTE}/manifests", methods=_ALL_METHODS)
@_database_phase
def manifests(group_ref: str) -> Response:
    _methods("GET")
    group = _group(group_ref)
    page, per_page = _page_args()
    listing = _admin().list_manifests(group.id, page, per_page, **_listing_args())
    return _paginated(listing, [_manifest_body(item) for item in listing.items])


@bp.route(f"{_ROUTE}/images/<path:image>", methods=_ALL_METHODS)
@_database_phase
def image(group_ref: str, image: str) -> Response:
    """Schedule one cached image (every tag and platform) for deletion."""
    _methods("DELETE")
    group = _group(group_ref)
    if not is_valid_image_name(image):
        problem = "is not a valid image name"
        raise ApiError(400, f"400 Bad request - image {problem}", errors={"image": problem})
    deleted = state(None).lifecycle.delete_image(group.id, image)
    if deleted is None:
        raise ApiError(404, "404 Image Not Found")
    return _json(
        {
            "message": "202 Accepted",
            "image": deleted.image,
            "scheduled_for_deletion": {"manifests": deleted.manifests, "blobs": deleted.blobs},
        },
        202,
    )


@bp.route(f"{_ROUTE}/usage", methods=_ALL_METHODS)
@_database_phase
def usage(group_ref: str) -> Response:
    """What the cache saved the group, day by day, over the last ``days`` UTC days."""
    _methods("GET")
    group = _group(group_ref)
    days = _positive_int("days", 30, 366)
    today = dt.datetime.now(dt.UTC).date()
    since = today - dt.timedelta(days=days - 1)
    summary = UsageSummary.build(
        read_usage(state(None).metadata.session, group.id, since), today, days
    )
    return _json(
        {
            "days": [
                {"day": row.day.isoformat(), **dataclasses.asdict(row.counts)}
                for row in summary.days
            ],
            "pulls_cached": summary.pulls_cached,
            "pulls_upstream": summary.pulls_upstream,
            "bytes_saved": summary.bytes_saved,
            "bytes_upstream": summary.bytes_upstream,
            "hit_ratio": summary.hit_ratio,
        }
    )


@bp.route(f"{_ROUTE}/blobs", methods=_ALL_METHODS)
@_database_phase
def blobs(group_ref: str) -> Response:
    _methods("GET")
    group = _group(group_ref)
    page, per_page = _page_args()
    listing = _admin().list_blobs(group.id, page, per_page)
    return _paginated(listing, [_blob_body(item) for item in listing.items])


# -- upstreams ------------------------------------------------------------------------------------


def _upstream_body(view: group_upstreams.UpstreamView) -> dict[str, t.Any]:
    return {
        "name": view.name,
        "url": view.url,
        "hosts": list(view.hosts),
        "position": view.position,
        "used": view.used,
        "credential_set": view.credential_set,
        "credential_unreadable": view.credential_unreadable,
        "status": {
            "last_status": view.last_status,
            "rate_limit_limit": view.rate_limit_limit,
            "rate_limit_remaining": view.rate_limit_remaining,
            "down_until": _time(view.down_until),
        },
    }


def _upstreams_body(group: Group) -> dict[str, t.Any]:
    view = group_upstreams.group_view(group.id)
    return {
        "group_id": group.id,
        "custom_order": view.custom_order,
        "upstreams": [_upstream_body(item) for item in view.upstreams],
    }


def _fields(data: t.Any, allowed: tuple[str, ...]) -> dict[str, t.Any]:
    """A JSON object with no field but ``allowed`` (every one of them required)."""
    if not isinstance(data, dict):
        raise ApiError(400, "400 Bad request - the body must be a JSON object")
    errors = {str(key)[:100]: "unknown field" for key in data if key not in allowed}
    errors.update({key: "is required" for key in allowed if key not in data})
    if errors:
        fields = ", ".join(sorted(errors))
        raise ApiError(400, f"400 Bad request - invalid fields: {fields}", errors=errors)
    return data


def _parse_order(data: t.Any, instance: list[str]) -> list[str] | None:
    order = _fields(data, ("order",))["order"]
    if order is None:
        return None
    problem = None
    if not isinstance(order, list) or not all(isinstance(name, str) for name in order):
        problem = "must be a list of upstream names, or null for the instance's list"
    else:
        try:
            check_order(order, instance)
        except UpstreamListError as exc:
            problem = str(exc)
    if problem is not None:
        raise ApiError(400, f"400 Bad request - order {problem}", errors={"order": problem})
    return t.cast(list[str], order)


def _upstream_name(name: str, instance: list[str]) -> str:
    if not group_upstreams.UPSTREAM_NAME.fullmatch(name) or name not in instance:
        raise ApiError(404, "404 Upstream Not Found")
    return name


@bp.route(f"{_ROUTE}/upstreams", methods=_ALL_METHODS)
def upstreams(group_ref: str) -> Response:
    _methods("GET", "PUT")
    proxy = state(None)
    with proxy.database.phase("API upstreams"):
        group = _group(group_ref)
        if request.method != "PUT":
            return _json(_upstreams_body(group))
    instance = group_upstreams.instance_names()
    order = _parse_order(_json_body(), instance)
    with proxy.database.phase("API upstreams update"):
        group_upstreams.records().set_order(group.id, order, instance_names=instance)
        return _json(_upstreams_body(group))


@bp.route(f"{_ROUTE}/upstreams/<name>/credentials", methods=_ALL_METHODS)
def upstream_credentials(group_ref: str, name: str) -> Response:
    _methods("PUT", "DELETE")
    proxy = state(None)
    instance = group_upstreams.instance_names()
    with proxy.database.phase("API upstream credentials"):
        group = _group(group_ref)
        name = _upstream_name(name, instance)
        if request.method == "DELETE":
            group_upstreams.records().clear_credentials(group.id, name)
            return Response(status=204, headers={"Cache-Control": "no-store"})
    data = _fields(_json_body(), ("username", "password"))
    problem = credential_problem(data["username"], data["password"])
    if problem is not None:
        field = "username" if "username" in problem else "password"
        raise ApiError(400, f"400 Bad request - {problem}", errors={field: problem})
    with proxy.database.phase("API upstream credentials update"):
        group_upstreams.records().set_credentials(
            group.id, name, data["username"], data["password"], instance_names=instance
        )
        view = group_upstreams.group_view(group.id).find(name)
    assert view is not None
    return _json(_upstream_body(view))


@bp.route(f"{_ROUTE}/<path:rest>", methods=_ALL_METHODS)
def unknown(group_ref: str, rest: str) -> Response:
    raise ApiError(404, "404 Not Found")
