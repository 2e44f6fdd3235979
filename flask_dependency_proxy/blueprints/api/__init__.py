"""REST API under ``/api/v4/groups/<group>/dependency_proxy/``, for scripts.

``<group>`` is the group's numeric id or its URL-encoded full path (``org%2Fteam``).
Requests authenticate with a token of the host that has the host's API scope (the
adapter's ``api_scope_name``, ``api`` by default), sent as
``PRIVATE-TOKEN: <token>`` or ``Authorization: Bearer <token>``, or with the web
session; a session request that changes something also sends the page's CSRF token in
``X-CSRF-Token``. Every endpoint is for those who administer the group (owners by
default). Answers and errors are JSON; errors carry a ``message``. A group whose id
now names another path than the one recorded answers 409 on every endpoint, saying
what the host calls (:mod:`...auth.group_paths`); so does a ``PUT`` of the settings or
upstreams of a group whose path another group holds (compared lowercased).

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
- ``GET usage``: what the cache saved the group, day by day (``days``, default 30).
- ``GET``/``PUT upstreams``: every upstream of the instance, those the group uses first
  in its order (``position`` from 1; ``null`` for one it does not use), with its
  ``url``, ``hosts``, ``credential_set`` and what this process last saw of it
  (``status``: ``last_status``, ``rate_limit_limit``, ``rate_limit_remaining``,
  ``down_until``). ``PUT {"order": ["ghcr", "dockerhub"]}`` narrows and reorders;
  ``{"order": null}`` goes back to every upstream in the instance's order.
- ``PUT upstreams/<name>/credentials`` ``{"username", "password"}`` keeps the group's
  own credential for that upstream (encrypted; never answered back);
  ``DELETE upstreams/<name>/credentials`` forgets it (204).
- ``GET``/``POST blocks``, ``DELETE blocks/<id>``, ``GET pulls``, ``GET``/``PUT
  deleted_tags`` and ``GET events``: the supply-chain controls (:mod:`._supply_chain`).
- ``GET``/``PUT signature_policy``: ``{"mode": "off|warn|enforce", "keys": [{"name",
  "pem", "images"}], "identities": [{"issuer", "subject", "images"}]}``; ``images`` is
  an image-name pattern (``*`` for any run of characters) or ``null`` for every image.
  Answers also carry the ``index_rule`` and how much ``trust`` the instance configured.

- ``GET``/``PUT refresh``: predictive refresh (``{"enabled", "tags",
  "interval_seconds"}``, each ``null`` for the instance's default) and what the
  refresher last did per image and tag; ``POST warm`` with a JSON list of image
  references: ``202`` with what was queued, errors per item; for owners, or a CI job
  of the group sending ``JOB-TOKEN`` (:mod:`._refresh`).

One blueprint, ``dependency_proxy_api``: :mod:`._base` holds it with what every endpoint
shares (authentication, the group, errors, JSON, pagination); :mod:`._contents` (cache,
images, manifests, blobs, usage), :mod:`._settings`, :mod:`._supply_chain` and
:mod:`._upstreams` add their routes to it. The endpoints parse the request (the rules
shared with the pages are in :mod:`.._group_input`), call
:class:`~...admin.groups.GroupAdmin` (``group_admin`` of the app's state) and render its
answer as JSON. While the database is unavailable every
endpoint answers 503 with ``Retry-After`` within
``DEPENDENCY_PROXY_DATABASE_TIMEOUT_SECONDS`` (see :mod:`...models.database`).
"""

from __future__ import annotations

from flask import Response

from . import _contents, _refresh, _settings, _signatures, _supply_chain, _upstreams
from ._base import ALL_METHODS, ROUTE, ApiError, bp

__all__ = ["bp"]

# The modules above add their routes on import.
del _contents, _refresh, _settings, _signatures, _supply_chain, _upstreams


@bp.route(f"{ROUTE}/<path:rest>", methods=ALL_METHODS)
def unknown(group_ref: str, rest: str) -> Response:
    raise ApiError(404, "404 Not Found")
