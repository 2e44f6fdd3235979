"""The group's settings: ``GET``/``PUT settings`` (on/off, cleanup policy, size limit)."""

from __future__ import annotations

import typing as t

from flask import Response, request

from ..._state import state
from .._formatting import image_prefix
from .._group_input import settings_from_json
from ._base import ALL_METHODS, ROUTE, admin, bp, group, json_body, json_response, methods, time

if t.TYPE_CHECKING:
    from ...host import Group
    from ...models.group_settings import Settings


def _settings_body(found: Group, settings: Settings) -> dict[str, t.Any]:
    quota = admin().quota(found.id)
    return {
        "group_id": found.id,
        "group_full_path": found.full_path,
        "enabled": settings.enabled,
        "image_prefix": image_prefix(found),
        "cleanup_policy": {"enabled": settings.cleanup_enabled, "days": settings.cleanup_days},
        "cache_cleared_at": time(settings.purged_at),
        "quota": {
            "limit_bytes": quota.limit,
            "used_bytes": quota.used,
            "policy": quota.policy,
        },
    }


@bp.route(f"{ROUTE}/settings", methods=ALL_METHODS)
def settings(group_ref: str) -> Response:
    methods("GET", "PUT")
    proxy = state(None)
    group_admin = admin()
    with proxy.database.phase("API settings"):
        found = group(group_ref, claim=request.method == "PUT")
        if request.method != "PUT":
            return json_response(_settings_body(found, group_admin.settings(found.id)))
    # The body is read between two phases: a slow client holds no connection.
    changes = settings_from_json(json_body())
    with proxy.database.phase("API settings update"):
        updated = group_admin.update_settings(found.id, **changes)
        return json_response(_settings_body(found, updated))
