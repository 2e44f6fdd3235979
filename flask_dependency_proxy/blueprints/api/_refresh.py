"""Predictive refresh over the REST API: ``GET``/``PUT refresh`` (the group's refresh
settings and what the refresher last did per image and tag: ``last_pull``, the tag's
last pull since its refresh, and ``warm_because_of_refresh``, whether that pull served
from the cache the digest the refresher fetched ahead; ``null`` with the pull record
off) and ``POST warm`` (a list of image references to warm now, for owners or a CI job
token of the group).
"""

from __future__ import annotations

import typing as t

from flask import Response, request

from ..._state import state
from ...admin.refresh import RefreshView, refresh_view
from ...cache.refresh import group_target
from ...cache.warm import Target
from ...host import Group, Principal, PrincipalKind
from ...models.group_settings import (
    MAX_REFRESH_INTERVAL_SECONDS,
    MAX_REFRESH_TAGS,
    MIN_REFRESH_INTERVAL_SECONDS,
    GroupSettingsRecords,
)
from ...models.hot_tags import HotTagRecords
from ...models.pulls import PullEntry, PullRecords
from ._base import (
    ALL_METHODS,
    ROUTE,
    ApiError,
    bp,
    group,
    invalid,
    json_body,
    json_response,
    methods,
    settings_body,
    time,
)

#: Most references one warm call names.
MAX_WARM_REFERENCES = 100
#: The header a CI job sends its token in (as GitLab's API takes it).
JOB_TOKEN_HEADER = "JOB-TOKEN"


def _records() -> HotTagRecords:
    return HotTagRecords(lambda: state(None).metadata.session)


def _settings_records() -> GroupSettingsRecords:
    proxy = state(None)
    return GroupSettingsRecords(
        lambda: proxy.metadata.session, default_enabled=proxy.config.group_default_enabled
    )


def _view(found: Group) -> RefreshView:
    proxy = state(None)
    refresher = proxy.refresher
    assert refresher is not None
    pulls = PullRecords(lambda: proxy.metadata.session) if proxy.config.pull_record else None
    return refresh_view(
        found.id, _settings_records().get(found.id), refresher.defaults, _records(), pulls
    )


def _pull_body(pull: PullEntry | None) -> dict[str, t.Any] | None:
    if pull is None:
        return None
    return {"pulled_at": time(pull.pulled_at), "digest": pull.digest, "outcome": pull.outcome}


def _body(found: Group) -> dict[str, t.Any]:
    settings = _settings_records().get(found.id)
    view = _view(found)
    return {
        "enabled": view.enabled,
        "tags": view.tags,
        "interval_seconds": view.interval_seconds,
        "own": {
            "enabled": settings.refresh_enabled,
            "tags": settings.refresh_tags,
            "interval_seconds": settings.refresh_interval_seconds,
        },
        "budget_per_run": view.budget_per_run,
        "tags_refreshed": [
            {
                "image": status.state.image,
                "tag": status.state.tag,
                "checked_at": time(status.state.checked_at),
                "refreshed_at": time(status.state.refreshed_at),
                "refreshed_digest": status.state.refreshed_digest,
                "prefetched_bytes": status.state.prefetched_bytes,
                "platforms": list(status.state.platforms),
                "last_pull": _pull_body(status.last_pull),
                "warm_because_of_refresh": status.warm_because_of_refresh,
            }
            for status in view.statuses
        ],
    }


#: The fields a ``PUT refresh`` takes.
_REFRESH_FIELDS = ("enabled", "tags", "interval_seconds")


def _optional_int(body: dict[str, t.Any], key: str, low: int, high: int) -> int | None:
    value = body[key]
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid(
            key, f"must be a whole number from {low} to {high}, or null", prefix=f"{key} "
        )
    return value


def _refresh_changes(body: t.Any) -> dict[str, t.Any]:
    """The settings a ``PUT refresh`` body changes, each field checked."""
    body = settings_body(body, _REFRESH_FIELDS)
    changes: dict[str, t.Any] = {}
    if "enabled" in body:
        if body["enabled"] is not None and not isinstance(body["enabled"], bool):
            raise invalid("enabled", "must be true, false or null", prefix="enabled ")
        changes["refresh_enabled"] = body["enabled"]
    if "tags" in body:
        changes["refresh_tags"] = _optional_int(body, "tags", 1, MAX_REFRESH_TAGS)
    if "interval_seconds" in body:
        changes["refresh_interval_seconds"] = _optional_int(
            body, "interval_seconds", MIN_REFRESH_INTERVAL_SECONDS, MAX_REFRESH_INTERVAL_SECONDS
        )
    return changes


@bp.route(f"{ROUTE}/refresh", methods=ALL_METHODS)
def refresh_settings(group_ref: str) -> Response:
    """The group's refresh settings; ``PUT`` takes ``enabled`` (``true``, ``false`` or
    ``null`` for the instance's default), ``tags`` and ``interval_seconds`` (``null``:
    the instance's default), each optional; an unknown field or a bad value is a 400
    naming it (``errors``), and changes nothing."""
    methods("GET", "PUT")
    proxy = state(None)
    with proxy.database.phase("API refresh settings"):
        found = group(group_ref, claim=request.method == "PUT")
        if request.method != "PUT":
            return json_response(_body(found))
    changes = _refresh_changes(json_body())
    with proxy.database.phase("API refresh settings update"):
        _settings_records().update(found.id, _now(), **changes)
        return json_response(_body(found))


def _now() -> t.Any:
    from ...models.tables import utcnow

    return utcnow()


def _job_principal() -> Principal | None:
    """The principal of a ``JOB-TOKEN`` header, or ``None`` without one.

    :raises ApiError: 401 for a token that is no running job's.
    """
    secret = request.headers.get(JOB_TOKEN_HEADER)
    if secret is None:
        return None
    secret = secret.strip()
    proxy = state(None)
    if not secret or len(secret) > 1024:
        raise ApiError(401, "401 Unauthorized")
    outcome = proxy.host.authenticate(proxy.config.job_token_username, secret)
    if not isinstance(outcome, Principal) or outcome.kind is not PrincipalKind.JOB_TOKEN:
        raise ApiError(401, "401 Unauthorized")
    return outcome


def _warm_group(group_ref: str) -> Group:
    """The group a warm call names: a job token needs to read it, anyone else to
    administer it (:func:`._base.group`)."""
    principal = _job_principal()
    if principal is None:
        return group(group_ref)
    host = state(None).host
    found = host.find_group_by_id(int(group_ref)) if group_ref.isdigit() else None
    if found is None and not group_ref.isdigit():
        found = host.find_group(group_ref.lower()) if len(group_ref) <= 1024 else None
    if found is None or not host.can_read(principal, found):
        raise ApiError(404, "404 Group Not Found")
    return found


@bp.route(f"{ROUTE}/warm", methods=ALL_METHODS)
def warm(group_ref: str) -> Response:
    """Queue a warm-up of the references in the body (a JSON list, or
    ``{"references": [...]}``): ``IMAGE[:TAG|@DIGEST]`` of the group, or a reference
    through the group's image prefix. ``202`` with what was queued and, per item, why a
    reference was not; ``400`` when none can be warmed."""
    methods("POST")
    proxy = state(None)
    with proxy.database.phase("API warm"):
        found = _warm_group(group_ref)
        if not _settings_records().get(found.id).enabled:
            raise ApiError(409, "409 Conflict - the dependency proxy is off for this group")
    body = json_body()
    references = body.get("references") if isinstance(body, dict) else body
    if not isinstance(references, list) or not references:
        raise ApiError(400, "400 Bad request - send a JSON list of image references")
    if len(references) > MAX_WARM_REFERENCES:
        raise ApiError(400, f"400 Bad request - at most {MAX_WARM_REFERENCES} references per call")
    queued: list[dict[str, str]] = []
    errors: list[dict[str, t.Any]] = []
    targets: list[Target] = []
    for position, reference in enumerate(references):
        target = group_target(reference, found.full_path) if isinstance(reference, str) else None
        if target is None:
            errors.append(
                {
                    "index": position,
                    "reference": reference if isinstance(reference, str) else None,
                    "message": "not an image reference of this group's dependency proxy"
                    " (IMAGE[:TAG|@DIGEST], or one through the group's image prefix)",
                }
            )
            continue
        targets.append(target)
        queued.append(
            {"reference": reference, "image": target.image, "tag_or_digest": target.reference}
        )
    if not targets:
        return json_response(
            {
                "message": "400 Bad request - no reference can be warmed",
                "queued": [],
                "errors": errors,
            },
            400,
        )
    warm_queue = proxy.warm_queue
    assert warm_queue is not None
    if not warm_queue.put(found.id, found.full_path.lower(), targets):
        raise ApiError(503, "503 Service Unavailable - too many warm-ups waiting; try again")
    return json_response({"queued": queued, "errors": errors}, 202)
