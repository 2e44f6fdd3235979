"""What the group has cached, and deleting it: ``cache``, ``images/<image>``,
``manifests``, ``blobs`` and ``usage``."""

from __future__ import annotations

import dataclasses
import typing as t

from flask import Response, request

from ..._state import state
from ...admin.lifecycle import PurgeTooSoon
from ...models.listings import MAX_SEARCH_LENGTH, ORDER_BY, SORTS, valid_search
from ...models.tables import Status
from ...oci.reference import is_valid_image_name
from ._base import (
    ALL_METHODS,
    ROUTE,
    ApiError,
    admin,
    bp,
    database_phase,
    group,
    invalid,
    json_response,
    methods,
    page_args,
    paginated,
    positive_int,
    time,
)

if t.TYPE_CHECKING:
    from ...models.listings import BlobItem, ManifestItem

_STATUS_NAMES = {Status.DEFAULT: "default", Status.PENDING_DESTRUCTION: "pending_destruction"}


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
        "created_at": time(item.created_at),
        "updated_at": time(item.updated_at),
        "last_read_at": time(item.last_read_at),
    }


def _blob_body(item: BlobItem) -> dict[str, t.Any]:
    return {
        "id": item.id,
        "digest": item.digest,
        "size": item.size,
        "status": _STATUS_NAMES[item.status],
        "created_at": time(item.created_at),
        "last_read_at": time(item.last_read_at),
    }


def _choice(name: str, allowed: tuple[str, ...]) -> str:
    raw = request.args.get(name) or allowed[0]
    if raw not in allowed:
        raise invalid(name, f"must be one of {', '.join(allowed)}", prefix=f"{name} ")
    return raw


def _listing_args() -> dict[str, t.Any]:
    """``order_by``, ``sort`` and ``search`` of a manifest listing, validated."""
    search = request.args.get("search", "")
    if not valid_search(search):
        problem = (
            f"must be at most {MAX_SEARCH_LENGTH} characters of image names"
            " (letters, digits, '.', '_', '-' and '/')"
        )
        raise invalid("search", problem, prefix="search ")
    return {
        "order_by": _choice("order_by", ORDER_BY),
        "sort": _choice("sort", SORTS),
        "search": search or None,
    }


@bp.route(f"{ROUTE}/cache", methods=ALL_METHODS)
@database_phase
def cache(group_ref: str) -> Response:
    methods("DELETE")
    found = group(group_ref)
    try:
        result = admin().purge(found.id)
    except PurgeTooSoon as exc:
        raise ApiError(
            409,
            f"409 Conflict - {exc}",
            headers={"Retry-After": str(exc.retry_after_seconds)},
        ) from None
    return json_response(
        {
            "message": "202 Accepted",
            "scheduled_for_deletion": {"manifests": result.manifests, "blobs": result.blobs},
        },
        202,
    )


@bp.route(f"{ROUTE}/manifests", methods=ALL_METHODS)
@database_phase
def manifests(group_ref: str) -> Response:
    methods("GET")
    found = group(group_ref)
    page, per_page = page_args()
    listing = admin().manifests(found.id, page, per_page, **_listing_args())
    bodies = [_manifest_body(item) for item in listing.items]
    gate = state(None).signatures
    if gate is not None:
        # What the group's signature policy found for each, as the page shows it.
        states = gate.image_states(found.id, [(item.image, item.digest) for item in listing.items])
        for body, item in zip(bodies, listing.items, strict=True):
            body["signature"] = states[(item.image, item.digest)].to_json()
    return paginated(listing, bodies)


@bp.route(f"{ROUTE}/images/<path:image>", methods=ALL_METHODS)
@database_phase
def image(group_ref: str, image: str) -> Response:
    """Schedule one cached image (every tag and platform) for deletion."""
    methods("DELETE")
    found = group(group_ref)
    if not is_valid_image_name(image):
        raise invalid("image", "is not a valid image name", prefix="image ")
    deleted = admin().delete_image(found.id, image)
    if deleted is None:
        raise ApiError(404, "404 Image Not Found")
    return json_response(
        {
            "message": "202 Accepted",
            "image": deleted.image,
            "scheduled_for_deletion": {"manifests": deleted.manifests, "blobs": deleted.blobs},
        },
        202,
    )


@bp.route(f"{ROUTE}/usage", methods=ALL_METHODS)
@database_phase
def usage(group_ref: str) -> Response:
    """What the cache saved the group, day by day, over the last ``days`` UTC days."""
    methods("GET")
    found = group(group_ref)
    days = positive_int("days", 30, 366)
    summary = admin().usage(found.id, days)
    return json_response(
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


@bp.route(f"{ROUTE}/blobs", methods=ALL_METHODS)
@database_phase
def blobs(group_ref: str) -> Response:
    methods("GET")
    found = group(group_ref)
    page, per_page = page_args()
    listing = admin().blobs(found.id, page, per_page)
    return paginated(listing, [_blob_body(item) for item in listing.items])
