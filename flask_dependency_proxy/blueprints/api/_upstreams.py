"""The group's upstreams: ``GET``/``PUT upstreams`` (order) and
``PUT``/``DELETE upstreams/<name>/credentials`` (the group's own credential)."""

from __future__ import annotations

import typing as t

from flask import Response, request

from ..._state import state
from ...models.upstreams import UpstreamListError
from .._group_input import credential_from_json, upstream_order_from_json
from ._base import (
    ALL_METHODS,
    ROUTE,
    ApiError,
    admin,
    bp,
    group,
    invalid,
    json_body,
    json_response,
    methods,
    time,
)

if t.TYPE_CHECKING:
    from ...admin.groups import UpstreamView
    from ...host import Group


def _upstream_body(view: UpstreamView) -> dict[str, t.Any]:
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
            "down_until": time(view.down_until),
        },
    }


def _upstreams_body(found: Group) -> dict[str, t.Any]:
    view = admin().upstreams(found.id)
    return {
        "group_id": found.id,
        "custom_order": view.custom_order,
        "upstreams": [_upstream_body(item) for item in view.upstreams],
    }


@bp.route(f"{ROUTE}/upstreams", methods=ALL_METHODS)
def upstreams(group_ref: str) -> Response:
    methods("GET", "PUT")
    proxy = state(None)
    with proxy.database.phase("API upstreams"):
        found = group(group_ref, claim=request.method == "PUT")
        if request.method != "PUT":
            return json_response(_upstreams_body(found))
    order = upstream_order_from_json(json_body())
    with proxy.database.phase("API upstreams update"):
        try:
            admin().set_upstream_order(found.id, order)
        except UpstreamListError as exc:
            raise invalid("order", str(exc), prefix="order ") from None
        return json_response(_upstreams_body(found))


@bp.route(f"{ROUTE}/upstreams/<name>/credentials", methods=ALL_METHODS)
def upstream_credentials(group_ref: str, name: str) -> Response:
    methods("PUT", "DELETE")
    proxy = state(None)
    group_admin = admin()
    with proxy.database.phase("API upstream credentials"):
        found = group(group_ref, claim=request.method == "PUT")
        if not group_admin.is_upstream(name):
            raise ApiError(404, "404 Upstream Not Found")
        if request.method == "DELETE":
            group_admin.clear_credentials(found.id, name)
            return Response(status=204, headers={"Cache-Control": "no-store"})
    username, password = credential_from_json(json_body())
    with proxy.database.phase("API upstream credentials update"):
        try:
            group_admin.set_credentials(found.id, name, username, password)
        except UpstreamListError as exc:
            problem = str(exc)
            raise invalid("username" if "username" in problem else "password", problem) from None
        view = group_admin.upstreams(found.id).find(name)
    assert view is not None
    return json_response(_upstream_body(view))
