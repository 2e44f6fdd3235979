"""The group's supply-chain controls: ``blocks``, ``pulls``, ``deleted_tags``,
``cooldown``, ``cooldowns`` and ``events`` (see :mod:`...admin.supply_chain`).

- ``GET blocks``: the active blocks that apply to the group, its own and the instance's
  (``removed=true``: lifted ones too). ``POST blocks`` ``{"digest", "reason"}`` or
  ``{"image", "tag_pattern", "reason"}``: 201 with the block and ``pulled`` (``count``,
  ``projects``, ``last_pulled_at``: who pulled it in the last 30 days).
  ``DELETE blocks/<id>``: lifts one of the group's own blocks (recorded); 404 for an
  instance administrator's block or none.
- ``GET pulls``: the group's pull record, newest first, paginated like the listings;
  filters ``digest``, ``image``, ``since``, ``until`` (ISO 8601 times, UTC when no zone
  is given), ``subject`` and ``project``.
- ``GET``/``PUT deleted_tags``: ``{"policy": "serve" | "refuse" | null}`` for a cached tag
  upstream answers 404 for (``null``: the instance's default); answers carry
  ``default`` and ``effective``.
- ``GET``/``PUT cooldown``: the group's tag cooldown, ``{"cooldown_hours": number,
  "new_tags": "serve" | "refuse", "digest_pulls": "allow" | "refuse", "exempt": [image
  patterns]}``; a ``PUT`` changes the fields it sends (``null``: the instance's default);
  answers carry ``default`` and ``effective``.
- ``GET cooldowns``: the tags in cooldown with their previous and pending digests and
  release times. ``POST cooldowns/<id>/release``: serve the pending digest from the
  tag's next pull (recorded with who); 404 for none or one already released.
- ``GET events``: what the controls did in the group lately.
"""

from __future__ import annotations

import datetime as dt
import typing as t

from flask import Response, request

from ..._state import state
from ...admin.supply_chain import InvalidBlock, InvalidCooldown
from ...models.group_settings import KEEP
from ...models.pulls import PullFilter
from ...oci.reference import is_valid_digest, is_valid_image_name
from ._base import (
    ALL_METHODS,
    ROUTE,
    ApiError,
    bp,
    database_phase,
    group,
    invalid,
    json_body,
    json_response,
    methods,
    page_args,
    paginated,
    settings_body,
    time,
)

if t.TYPE_CHECKING:
    from ...admin.supply_chain import (
        CooldownSettings,
        DeletedTagPolicy,
        HeldTag,
        SupplyChainAdmin,
    )
    from ...cache.cooldown import CooldownPolicy
    from ...models.blocks import Block, Event
    from ...models.pulls import PullEntry, PullSummary

_MAX_FILTER = 255


def _controls() -> SupplyChainAdmin:
    return state(None).supply_chain


def block_body(block: Block) -> dict[str, t.Any]:
    return {
        "id": block.id,
        "scope": "instance" if block.group_id is None else "group",
        "digest": block.digest,
        "image": block.image,
        "tag_pattern": block.tag_pattern,
        "reason": block.reason,
        "created_at": time(block.created_at),
        "created_by": block.created_by,
        "active": block.active,
        "removed_at": time(block.removed_at),
        "removed_by": block.removed_by,
    }


def pulled_body(summary: PullSummary) -> dict[str, t.Any]:
    return {
        "count": summary.count,
        "projects": list(summary.projects),
        "last_pulled_at": time(summary.last_pulled_at),
    }


def pull_body(entry: PullEntry) -> dict[str, t.Any]:
    return {
        "id": entry.id,
        "pulled_at": time(entry.pulled_at),
        "image": entry.image,
        "reference": entry.reference,
        "digest": entry.digest,
        "outcome": entry.outcome,
        "principal": {
            "kind": entry.principal_kind,
            "subject": entry.subject,
            "username": entry.username,
        },
        "context": entry.context,
        "client_address": entry.client_address,
        "user_agent": entry.user_agent,
    }


def _event_body(event: Event) -> dict[str, t.Any]:
    return {
        "id": event.id,
        "at": time(event.at),
        "kind": event.kind,
        "image": event.image,
        "reference": event.reference,
        "message": event.message,
    }


def _policy_body(policy: DeletedTagPolicy) -> dict[str, t.Any]:
    return {"policy": policy.own, "default": policy.default, "effective": policy.effective}


def _principal_name() -> str:
    """Who changes something, as the record keeps it."""
    from ._base import _principal

    return _principal().username


@bp.route(f"{ROUTE}/blocks", methods=ALL_METHODS)
def blocks(group_ref: str) -> Response:
    methods("GET", "POST")
    proxy = state(None)
    with proxy.database.phase("API blocks"):
        found = group(group_ref)
        if request.method != "POST":
            removed = request.args.get("removed", "") in ("1", "true")
            listed = _controls().blocks(found.id, removed=removed)
            return json_response([block_body(block) for block in listed])
        by = _principal_name()
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "400 Bad request - the body must be a JSON object")
    unknown = [
        str(key)[:100] for key in body if key not in ("digest", "image", "tag_pattern", "reason")
    ]
    if unknown:
        raise ApiError(
            400,
            f"400 Bad request - unknown fields: {', '.join(unknown)}",
            errors={key: "unknown field" for key in unknown},
        )
    values = {key: body.get(key) for key in ("digest", "image", "tag_pattern", "reason")}
    for key, value in values.items():
        if value is not None and not isinstance(value, str):
            raise invalid(key, "must be a string", prefix=f"{key} ")
    with proxy.database.phase("API block"):
        try:
            created = _controls().block(
                found.id,
                digest=values["digest"],
                image=values["image"],
                tag_pattern=values["tag_pattern"],
                reason=values["reason"] or "",
                by=by,
            )
        except InvalidBlock as exc:
            raise ApiError(400, f"400 Bad request - {exc}", errors=exc.errors) from None
        return json_response(
            {**block_body(created.block), "pulled": pulled_body(created.pulled)}, 201
        )


@bp.route(f"{ROUTE}/blocks/<block_id>", methods=ALL_METHODS)
@database_phase
def block(group_ref: str, block_id: str) -> Response:
    methods("DELETE")
    found = group(group_ref)
    if not block_id.isdigit() or len(block_id) > 18:
        raise ApiError(404, "404 Block Not Found")
    lifted = _controls().unblock(int(block_id), found.id, by=_principal_name())
    if lifted is None:
        raise ApiError(404, "404 Block Not Found")
    return json_response(block_body(lifted))


def _moment(name: str) -> dt.datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        moment = dt.datetime.fromisoformat(raw[:64].replace("Z", "+00:00"))
    except ValueError:
        raise invalid(name, "must be an ISO 8601 time", prefix=f"{name} ") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def _text(name: str) -> str | None:
    raw = request.args.get(name)
    if not raw:
        return None
    if len(raw) > _MAX_FILTER:
        raise invalid(name, f"must be at most {_MAX_FILTER} characters", prefix=f"{name} ")
    return raw


def pull_filter(group_id: int | None) -> PullFilter:
    """The pulls API's query arguments, validated."""
    digest, image = _text("digest"), _text("image")
    if digest is not None and not is_valid_digest(digest):
        raise invalid("digest", "must be a digest such as sha256:<64 hex digits>", prefix="digest ")
    if image is not None and not is_valid_image_name(image):
        raise invalid("image", "is not a valid image name", prefix="image ")
    return PullFilter(
        group_id=group_id,
        digest=digest,
        image=image,
        since=_moment("since"),
        until=_moment("until"),
        subject=_text("subject"),
        project=_text("project"),
    )


@bp.route(f"{ROUTE}/pulls", methods=ALL_METHODS)
@database_phase
def pulls(group_ref: str) -> Response:
    methods("GET")
    found = group(group_ref)
    where = pull_filter(found.id)
    page, per_page = page_args()
    listing = _controls().pulls(where, page, per_page)
    return paginated(listing, [pull_body(entry) for entry in listing.items])


@bp.route(f"{ROUTE}/deleted_tags", methods=ALL_METHODS)
def deleted_tags(group_ref: str) -> Response:
    methods("GET", "PUT")
    proxy = state(None)
    with proxy.database.phase("API deleted tags"):
        found = group(group_ref)
        if request.method != "PUT":
            return json_response(_policy_body(_controls().deleted_tag_policy(found.id)))
    body = json_body()
    if not isinstance(body, dict) or set(body) != {"policy"}:
        raise ApiError(400, '400 Bad request - send {"policy": "serve" | "refuse" | null}')
    policy = body["policy"]
    if policy not in ("serve", "refuse", None):
        raise invalid("policy", "must be serve, refuse or null", prefix="policy ")
    with proxy.database.phase("API deleted tags update"):
        return json_response(_policy_body(_controls().set_deleted_tag_policy(found.id, policy)))


@bp.route(f"{ROUTE}/events", methods=ALL_METHODS)
@database_phase
def events(group_ref: str) -> Response:
    methods("GET")
    found = group(group_ref)
    return json_response([_event_body(event) for event in _controls().events(found.id, 100)])


def _cooldown_policy_body(policy: CooldownPolicy) -> dict[str, t.Any]:
    return {
        "cooldown_hours": policy.seconds / 3600,
        "new_tags": policy.new_tags,
        "digest_pulls": policy.digest_pulls,
        "exempt": list(policy.exempt),
    }


def _cooldown_body(settings: CooldownSettings) -> dict[str, t.Any]:
    return {
        "cooldown_hours": None if settings.own_seconds is None else settings.own_seconds / 3600,
        "new_tags": settings.own_new_tags,
        "digest_pulls": settings.own_digest_pulls,
        "exempt": list(settings.exempt),
        "default": _cooldown_policy_body(settings.default),
        "effective": _cooldown_policy_body(settings.effective),
    }


def held_body(held: HeldTag) -> dict[str, t.Any]:
    hold = held.hold
    return {
        "id": hold.id,
        "image": hold.image,
        "tag": hold.tag,
        "previous_digest": hold.previous_digest,
        "pending_digest": hold.pending_digest,
        "first_seen_at": time(hold.first_seen_at),
        "release_at": time(held.release_at),
        "released_at": time(hold.released_at),
        "released_by": hold.released_by,
    }


_COOLDOWN_FIELDS = ("cooldown_hours", "new_tags", "digest_pulls", "exempt")


def _cooldown_changes(body: t.Any) -> dict[str, t.Any]:
    """The fields of a ``PUT cooldown`` body, checked for their types."""
    body = settings_body(body, _COOLDOWN_FIELDS)
    changes: dict[str, t.Any] = {}
    if "cooldown_hours" in body:
        hours = body["cooldown_hours"]
        if hours is not None and (
            isinstance(hours, bool) or not isinstance(hours, int | float) or hours != hours
        ):
            raise invalid(
                "cooldown_hours", "must be a number of hours or null", prefix="cooldown_hours "
            )
        changes["seconds"] = None if hours is None else round(min(float(hours), 10.0**7) * 3600)
    for field, key in (("new_tags", "new_tags"), ("digest_pulls", "digest_pulls")):
        if field in body:
            value = body[field]
            if value is not None and not isinstance(value, str):
                raise invalid(field, "must be a string or null", prefix=f"{field} ")
            changes[key] = value
    if "exempt" in body:
        exempt = body["exempt"]
        if exempt is None:
            exempt = []
        if not isinstance(exempt, list) or not all(isinstance(p, str) for p in exempt):
            raise invalid("exempt", "must be a list of image patterns", prefix="exempt ")
        changes["exempt"] = exempt
    return changes


@bp.route(f"{ROUTE}/cooldown", methods=ALL_METHODS)
def cooldown(group_ref: str) -> Response:
    methods("GET", "PUT")
    proxy = state(None)
    with proxy.database.phase("API cooldown"):
        found = group(group_ref)
        if request.method != "PUT":
            return json_response(_cooldown_body(_controls().cooldown(found.id)))
    changes = _cooldown_changes(json_body())
    with proxy.database.phase("API cooldown update"):
        try:
            saved = _controls().set_cooldown(
                found.id,
                seconds=changes.get("seconds", KEEP),
                new_tags=changes.get("new_tags", KEEP),
                digest_pulls=changes.get("digest_pulls", KEEP),
                exempt=changes.get("exempt", KEEP),
            )
        except InvalidCooldown as exc:
            raise ApiError(400, f"400 Bad request - {exc}", errors=exc.errors) from None
        return json_response(_cooldown_body(saved))


@bp.route(f"{ROUTE}/cooldowns", methods=ALL_METHODS)
@database_phase
def cooldowns(group_ref: str) -> Response:
    methods("GET")
    found = group(group_ref)
    return json_response([held_body(held) for held in _controls().held_tags(found.id)])


@bp.route(f"{ROUTE}/cooldowns/<hold_id>/release", methods=ALL_METHODS)
@database_phase
def release_cooldown(group_ref: str, hold_id: str) -> Response:
    methods("POST")
    found = group(group_ref)
    if not hold_id.isdigit() or len(hold_id) > 18:
        raise ApiError(404, "404 Cooldown Not Found")
    released = _controls().release(found.id, int(hold_id), by=_principal_name())
    if released is None:
        raise ApiError(404, "404 Cooldown Not Found")
    return json_response(held_body(released))
