"""The group's "Dependency Proxy" page: settings, what the cache saved, cache contents
(sorted, filtered, one image deleted), clear cache.

Pages extend the host's base template (``DEPENDENCY_PROXY_BASE_TEMPLATE``) and can be
overridden by the host: a ``dependency_proxy/group.html`` in the application's own
templates folder wins over the one shipped here. Only principals the host lets
administer the group see them; other signed-in users get 404, anonymous visitors go
to ``DEPENDENCY_PROXY_LOGIN_VIEW``, else to the host's login through Flask-Login.
Forms carry the extension's own CSRF token and work without JavaScript; only the copy
button needs it.

The pages extend ``proxy_layout``, the wrapper of :mod:`._layout` that adds their style to
the base template's ``DEPENDENCY_PROXY_HEAD_BLOCK``; every ``<style>`` and ``<script>``
carries ``csp_nonce``, and nothing has an inline ``style=`` or event handler, so a strict
Content-Security-Policy holds.

What the templates get, for hosts that override them: ``base_template``,
``proxy_layout``, ``csp_nonce`` (``None`` without one), ``group``
(:class:`~flask_dependency_proxy.host.Group`), ``proxy_csrf_field()`` and
``proxy_csrf_token()``, ``human_size()``, ``format_time()``; ``group.html`` also gets
``settings``, ``stats``, ``listing`` (a page of manifests), ``prefix``, ``min_days``,
``max_days``, ``quota`` (:class:`~._formatting.QuotaView`), ``upstreams``
(:class:`~..admin.groups.GroupUpstreamsView`, never a secret) and ``usage``
(:class:`~..admin.usage_chart.UsageSummary`, the last 30 days), ``refresh``
(:class:`~..admin.refresh.RefreshView`: what predictive refresh did per tag, and whether
each tag's last pull was warm because of it) and ``list_query``
(``order_by``, ``sort``, ``search`` of the list) and ``controls``
(:class:`SupplyChainView`: blocks, recent pulls, the deleted-tag policy, the tag cooldown
and its tags in cooldown, events);
``clear.html`` gets ``stats`` and ``cooldown``; ``delete_image.html`` gets ``image``,
its ``tags`` and ``pulled`` (:class:`~..models.pulls.PullSummary`, the last 30 days).
Flashed messages use the categories ``info`` and ``error``. Credentials typed into the
page are never shown back, and never flashed.

The views parse the form, call :class:`~..admin.groups.GroupAdmin` (``group_admin`` of
the app's state) and render its answer. A group whose id now names another path than
the one recorded (:mod:`..auth.group_paths`) gets an error page (409) saying what the
host calls; saving the settings of a group whose path another group holds (compared
lowercased) is refused with a flashed error. Each view runs as one database phase
(:mod:`..models.database`). While the database is unavailable the pages answer a plain
503 page (not the host's base template, which may need the database itself) with
``Retry-After``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing as t
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from jinja2 import BaseLoader, ChoiceLoader, FileSystemLoader, FunctionLoader
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import BuildError
from werkzeug.utils import cached_property

from .._state import state
from ..admin.lifecycle import PurgeTooSoon
from ..admin.refresh import RefreshView, refresh_view
from ..admin.supply_chain import InvalidBlock, InvalidCooldown
from ..admin.usage_chart import UsageSummary
from ..auth.group_paths import GroupMoved, GroupPathTaken
from ..cache.quota import exact_size
from ..cache.signing import PolicyError
from ..models.database import RETRY_AFTER_SECONDS, DatabaseUnavailable
from ..models.group_settings import MAX_CLEANUP_DAYS, MIN_CLEANUP_DAYS
from ..models.hot_tags import HotTagRecords
from ..models.listings import DEFAULT_PER_PAGE, ORDER_BY, SORTS, Page, valid_search
from ..models.pulls import PullEntry, PullFilter, PullRecords
from ..models.stats import human_size
from ..models.upstreams import UpstreamListError
from ..oci.reference import GROUP_PATH_RE, is_valid_image_name
from ._bodies import bound_body
from ._csrf import CSRF_FIELD, CsrfRejected, csrf_field, csrf_token, csrf_valid
from ._formatting import QuotaView, format_duration, format_time, image_prefix
from ._group_input import (
    CLEANUP_DAYS,
    InvalidInput,
    WholeNumber,
    credential_from_form,
    size_limit_from_text,
    upstream_order_from_form,
)
from ._layout import layout_source, page_context

if t.TYPE_CHECKING:
    from flask.typing import ResponseReturnValue

    from ..admin.groups import GroupAdmin
    from ..admin.supply_chain import CooldownSettings, DeletedTagPolicy, HeldTag
    from ..host import Group
    from ..models.blocks import Block, Event


class _PagesBlueprint(Blueprint):
    """The pages' blueprint: its templates, and the wrappers of :mod:`._layout`."""

    @cached_property
    def jinja_loader(self) -> BaseLoader | None:
        assert self.template_folder is not None
        folder = os.path.join(self.root_path, self.template_folder)
        return ChoiceLoader([FileSystemLoader(folder), FunctionLoader(layout_source)])


bp = _PagesBlueprint("dependency_proxy_pages", __name__, template_folder="../templates")

_PAGE = "/groups/<path:full_path>/-/dependency_proxy"
_MAX_PAGE = 100_000
#: Days of the usage chart, ending today (UTC).
USAGE_DAYS = 30
#: Largest form body read; the pages' forms are a few hundred bytes.
MAX_FORM_BYTES = 64 * 1024


# First of the blueprint's hooks: the CSRF check below reads the form, before anyone
# is asked who they are.
bp.before_request(bound_body(MAX_FORM_BYTES))


@bp.before_request
def _protect_forms() -> None:
    if request.method not in ("GET", "HEAD", "OPTIONS") and not csrf_valid(
        request.form.get(CSRF_FIELD)
    ):
        raise CsrfRejected()


@bp.errorhandler(CsrfRejected)
def _csrf_rejected(error: CsrfRejected) -> ResponseReturnValue:
    return (
        render_template(
            "dependency_proxy/error.html",
            **page_context(),
            error_title="Form rejected",
            error_message=(
                "The form has expired or came from another site. Reload the page and try again."
            ),
        ),
        400,
    )


@bp.after_request
def _forbid_framing(response: Response) -> Response:
    """The pages' one-click forms (disable, clear cache) must not be clickjackable."""
    response.headers.setdefault("X-Frame-Options", "DENY")
    policies = " ".join(response.headers.getlist("Content-Security-Policy"))
    if "frame-ancestors" not in policies:
        # A second policy only adds restrictions to one the host may have set.
        response.headers.add("Content-Security-Policy", "frame-ancestors 'none'")
    return response


_UNAVAILABLE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Service unavailable</title></head>
<body><h1>Service unavailable</h1>
<p>The Dependency Proxy cannot reach its database right now. Try again in a moment.</p>
</body></html>
"""


_TOO_LARGE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Request too large</title></head>
<body><h1>Request too large</h1>
<p>The form sent to the Dependency Proxy page is larger than it accepts.</p>
</body></html>
"""


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(error: RequestEntityTooLarge) -> ResponseReturnValue:
    # A plain page, not the host's template: nothing of the request is needed to say it.
    return Response(
        _TOO_LARGE_PAGE, status=413, mimetype="text/html", headers={"Cache-Control": "no-store"}
    )


@bp.errorhandler(DatabaseUnavailable)
def _database_unavailable(error: DatabaseUnavailable) -> ResponseReturnValue:
    return Response(
        _UNAVAILABLE_PAGE,
        status=503,
        mimetype="text/html",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store"},
    )


# -- shared helpers -------------------------------------------------------------------------------


def _for_admins(view: t.Callable[..., ResponseReturnValue]) -> t.Callable[..., ResponseReturnValue]:
    """Resolve ``full_path`` to the group if the signed-in principal administers it.

    An anonymous visitor goes to the host's login (Flask-Login); everyone else gets 404,
    whether or not the group exists.
    """

    @functools.wraps(view)
    def wrapper(full_path: str, **kwargs: t.Any) -> ResponseReturnValue:
        with state(None).database.phase(f"page {request.endpoint}"):
            return _admin_view(view, full_path, **kwargs)

    return wrapper


def _admin_view(
    view: t.Callable[..., ResponseReturnValue], full_path: str, **kwargs: t.Any
) -> ResponseReturnValue:
    proxy = state(None)
    principal = proxy.host.current_principal()
    if principal is None:
        return _to_login(proxy.config.login_view)
    if len(full_path) > 1024 or not GROUP_PATH_RE.fullmatch(full_path):
        abort(404)
    group = proxy.host.find_group(full_path.lower())
    if group is None or not proxy.host.can_admin(principal, group):
        abort(404)
    try:
        _admin().admit(group, claim=getattr(view, "claims_path", False))
    except GroupMoved as moved:
        return _error_page("This group's Dependency Proxy is on hold", f"{moved}.", 409)
    except GroupPathTaken as taken:
        flash(f"Not saved: {taken}.", "error")
        return _back(group)
    return view(group, **kwargs)


_View = t.TypeVar("_View", bound=t.Callable[..., t.Any])


def _claims_path(view: _View) -> _View:
    """Mark a view that saves the group's settings: it records the group's path, and
    is refused when another group holds it."""
    view.claims_path = True  # type: ignore[attr-defined]
    return view


def _error_page(title: str, message: str, status: int) -> ResponseReturnValue:
    return (
        render_template(
            "dependency_proxy/error.html",
            **page_context(),
            error_title=title,
            error_message=message,
        ),
        status,
    )


def _to_login(login_view: str | None) -> ResponseReturnValue:
    """Send an anonymous visitor to sign in: ``LOGIN_VIEW``, else Flask-Login, else 401.

    The way back is the page's own path (never a URL from the request's headers), so a
    login view that follows ``next`` cannot be sent off-site through it.
    """
    if login_view is None:
        login_manager = getattr(current_app, "login_manager", None)
        if login_manager is None:
            abort(401)
        return t.cast("ResponseReturnValue", login_manager.unauthorized())
    if login_view.startswith(("/", "http://", "https://")):
        target = login_view
    else:
        try:
            target = url_for(login_view)
        except BuildError:
            raise RuntimeError(
                f"DEPENDENCY_PROXY_LOGIN_VIEW is {login_view!r}, which names no endpoint"
                " of this app: give an endpoint name or a URL."
            ) from None
    separator = "&" if "?" in target else "?"
    return redirect(f"{target}{separator}{urlencode({'next': request.full_path.rstrip('?')})}")


def _admin() -> GroupAdmin:
    return state(None).group_admin


def _back(group: Group) -> ResponseReturnValue:
    return redirect(url_for(".show", full_path=group.full_path))


def _render(template: str, group: Group, **context: t.Any) -> str:
    return render_template(
        template,
        **page_context(),
        group=group,
        proxy_csrf_field=csrf_field,
        proxy_csrf_token=csrf_token,
        human_size=human_size,
        format_time=format_time,
        **context,
    )


# -- views ----------------------------------------------------------------------------------------


@bp.get(_PAGE)
@_for_admins
def show(group: Group) -> ResponseReturnValue:
    admin = _admin()
    number = WholeNumber(1, _MAX_PAGE).from_text(request.args.get("page", "1")) or 1
    settings = admin.settings(group.id)
    stats = admin.stats(group.id)
    query = listing_query()
    listing = admin.manifests(
        group.id,
        number,
        DEFAULT_PER_PAGE,
        order_by=query["order_by"],
        sort=query["sort"],
        search=query["search"] or None,
    )
    quota = admin.quota(group.id)
    gate = state(None).signatures
    signatures = (
        gate.image_states(group.id, [(item.image, item.digest) for item in listing.items])
        if gate is not None
        else {}
    )
    return _render(
        "dependency_proxy/group.html",
        group,
        settings=settings,
        stats=stats,
        listing=listing,
        prefix=image_prefix(group),
        min_days=MIN_CLEANUP_DAYS,
        max_days=MAX_CLEANUP_DAYS,
        quota=QuotaView(quota.limit, quota.used, quota.policy),
        upstreams=admin.upstreams(group.id),
        refresh=refresh_section(group.id),
        usage=usage_summary(group.id),
        list_query=query,
        controls=supply_chain_view(group.id),
        signatures=signatures,
        signature_policy=gate.policy(group.id) if gate is not None else None,
        signature_default=gate.default_document if gate is not None else None,
    )


def listing_query() -> dict[str, str]:
    """``order_by``, ``sort`` and ``search`` of the list; a bad value is the default."""
    order_by = request.args.get("order_by", "")
    sort = request.args.get("sort", "")
    search = request.args.get("search", "").strip()
    return {
        "order_by": order_by if order_by in ORDER_BY else ORDER_BY[0],
        "sort": sort if sort in SORTS else SORTS[0],
        "search": search if valid_search(search) else "",
    }


def refresh_section(group_id: int) -> RefreshView | None:
    """What the refresher did per tag of the group (``None``: no refresher)."""
    proxy = state(None)
    if proxy.refresher is None:
        return None
    session = lambda: proxy.metadata.session  # noqa: E731
    return refresh_view(
        group_id,
        _admin().settings(group_id),
        proxy.refresher.defaults,
        HotTagRecords(session),
        PullRecords(session) if proxy.config.pull_record else None,
    )


def usage_summary(group_id: int) -> UsageSummary:
    """The group's last ``USAGE_DAYS`` days, the figures the usage API answers."""
    return _admin().usage(group_id, USAGE_DAYS)


@bp.post(f"{_PAGE}/settings")
@_for_admins
@_claims_path
def update_settings(group: Group) -> ResponseReturnValue:
    value = request.form.get("enabled")
    if value not in ("0", "1"):
        flash("Choose whether the Dependency Proxy is on or off.", "error")
        return _back(group)
    _admin().set_enabled(group.id, value == "1")
    done = "enabled" if value == "1" else "disabled"
    flash(f"Dependency Proxy {done} for {group.full_path}.", "info")
    return _back(group)


@bp.post(f"{_PAGE}/cleanup_policy")
@_for_admins
@_claims_path
def update_cleanup_policy(group: Group) -> ResponseReturnValue:
    enabled = request.form.get("cleanup_enabled") == "1"
    days = CLEANUP_DAYS.from_text(request.form.get("cleanup_days", "").strip())
    if days is None:
        flash(f"Days {CLEANUP_DAYS.problem}.", "error")
        return _back(group)
    _admin().set_cleanup_policy(group.id, enabled, days)
    if enabled:
        flash(f"Cleanup policy saved: items not pulled for {days} days are deleted.", "info")
    else:
        flash("Cleanup policy saved: it is off.", "info")
    return _back(group)


@bp.post(f"{_PAGE}/quota")
@_for_admins
@_claims_path
def update_quota(group: Group) -> ResponseReturnValue:
    """Set the group's size limit from a size such as ``20 GiB``; empty lifts it."""
    try:
        limit = size_limit_from_text(request.form.get("size_limit", ""))
    except InvalidInput as exc:
        flash(f"The size limit {exc.message}.", "error")
        return _back(group)
    _admin().set_limit(group.id, limit)
    if limit is None:
        flash("Size limit removed: the group may cache any amount.", "info")
    else:
        flash(f"Size limit saved: {exact_size(limit)}.", "info")
    return _back(group)


@bp.route(f"{_PAGE}/clear", methods=["GET", "POST"])
@_for_admins
def clear(group: Group) -> ResponseReturnValue:
    """GET asks for confirmation; POST schedules the group's cache for deletion."""
    if request.method == "GET":
        cooldown = state(None).config.purge_cooldown_seconds
        return _render(
            "dependency_proxy/clear.html",
            group,
            stats=_admin().stats(group.id),
            cooldown=format_duration(cooldown) if cooldown else None,
        )
    try:
        result = _admin().purge(group.id)
    except PurgeTooSoon as exc:
        flash(f"Not cleared: {exc}.", "error")
        return _back(group)
    flash(
        f"Cache cleared: {result.manifests} manifests and {result.blobs} blobs are scheduled"
        " for deletion and no longer served.",
        "info",
    )
    return _back(group)


@bp.route(f"{_PAGE}/images/<path:image>/delete", methods=["GET", "POST"])
@_for_admins
def delete_image(group: Group, image: str) -> ResponseReturnValue:
    """GET asks for confirmation; POST schedules the image for deletion."""
    if not is_valid_image_name(image):
        abort(404)
    if request.method == "GET":
        tags = _admin().image_tags(group.id, image)
        if not tags:
            abort(404)
        return _render(
            "dependency_proxy/delete_image.html",
            group,
            image=image,
            tags=tags,
            pulled=state(None).supply_chain.image_pulls(group.id, image),
        )
    deleted = _admin().delete_image(group.id, image)
    if deleted is None:
        flash(f"Not deleted: {image} is not cached.", "error")
        return _back(group)
    flash(
        f"Image {image} deleted: {deleted.manifests} manifests and {deleted.blobs} blobs are"
        " scheduled for deletion and no longer served.",
        "info",
    )
    return _back(group)


@bp.post(f"{_PAGE}/upstreams")
@_for_admins
@_claims_path
def update_upstreams(group: Group) -> ResponseReturnValue:
    """Narrow and reorder the group's upstreams (checked ones, by their order number), or
    go back to every upstream of the instance in its order."""
    admin = _admin()
    if request.form.get("action") == "reset":
        admin.set_upstream_order(group.id, None)
        flash("The group uses every upstream of the instance, in the instance's order.", "info")
        return _back(group)
    try:
        order = upstream_order_from_form(request.form, admin.instance_upstreams())
    except InvalidInput as exc:
        for name, problem in exc.errors.items():
            flash(f"The order of {name} {problem}.", "error")
        return _back(group)
    try:
        admin.set_upstream_order(group.id, order)
    except UpstreamListError as exc:
        flash(f"Upstreams not saved: {exc}.", "error")
        return _back(group)
    flash(f"Upstreams saved: {', '.join(order)}, in this order.", "info")
    return _back(group)


@bp.post(f"{_PAGE}/upstreams/<name>/credentials")
@_for_admins
@_claims_path
def update_upstream_credentials(group: Group, name: str) -> ResponseReturnValue:
    """Keep (``action=save``) or forget (``action=clear``) the group's own credential
    for one upstream."""
    admin = _admin()
    if not admin.is_upstream(name):
        abort(404)
    if request.form.get("action") == "clear":
        if admin.clear_credentials(group.id, name):
            flash(f"Credentials for {name} removed: the instance's are used.", "info")
        else:
            flash(f"{name} had no credentials of this group.", "info")
        return _back(group)
    username, password = credential_from_form(request.form)
    try:
        admin.set_credentials(group.id, name, username, password)
    except UpstreamListError as problem:
        flash(f"Credentials for {name} not saved: {problem}.", "error")
        return _back(group)
    flash(f"Credentials for {name} saved.", "info")
    return _back(group)


# -- supply-chain controls ------------------------------------------------------------------------

#: Pulls shown in the page's "Recent pulls".
RECENT_PULLS = 20


@dataclasses.dataclass(frozen=True)
class SupplyChainView:
    """What ``_supply_chain.html`` shows: ``blocks`` that apply to the group, the latest
    ``pulls`` (a page), the deleted-tag ``policy``, the ``cooldown`` and the tags
    ``held`` in it, and the latest ``events``."""

    blocks: list[Block]
    pulls: Page[PullEntry]
    policy: DeletedTagPolicy
    events: list[Event]
    cooldown: CooldownSettings
    held: list[HeldTag]


def supply_chain_view(group_id: int) -> SupplyChainView:
    controls = state(None).supply_chain
    return SupplyChainView(
        blocks=controls.blocks(group_id),
        pulls=controls.pulls(PullFilter(group_id=group_id), 1, RECENT_PULLS),
        policy=controls.deleted_tag_policy(group_id),
        events=controls.events(group_id, 10),
        cooldown=controls.cooldown(group_id),
        held=controls.held_tags(group_id),
    )


def _username() -> str:
    principal = state(None).host.current_principal()
    return principal.username if principal is not None else "unknown"


@bp.post(f"{_PAGE}/blocks")
@_for_admins
def block(group: Group) -> ResponseReturnValue:
    """Block a digest, or an image's tags that match a pattern, in this group."""
    form = {key: request.form.get(key, "").strip() or None for key in _BLOCK_FIELDS}
    try:
        created = state(None).supply_chain.block(
            group.id,
            digest=form["digest"],
            image=form["image"],
            tag_pattern=form["tag_pattern"],
            reason=form["reason"] or "",
            by=_username(),
        )
    except InvalidBlock as exc:
        for field, problem in exc.errors.items():
            flash(f"Not blocked: {field.replace('_', ' ')} {problem}.", "error")
        return _back(group)
    pulled = created.pulled
    projects = f", latest by {', '.join(pulled.projects)}" if pulled.projects else ""
    flash(
        f"Blocked {created.block.target}. It was pulled {pulled.count} times in the last"
        f" 30 days{projects}.",
        "info",
    )
    return _back(group)


_BLOCK_FIELDS = ("digest", "image", "tag_pattern", "reason")


@bp.post(f"{_PAGE}/blocks/<int:block_id>/unblock")
@_for_admins
def unblock(group: Group, block_id: int) -> ResponseReturnValue:
    lifted = state(None).supply_chain.unblock(block_id, group.id, by=_username())
    if lifted is None:
        flash("Not unblocked: this group has no such block.", "error")
    else:
        flash(f"Unblocked {lifted.target}.", "info")
    return _back(group)


@bp.post(f"{_PAGE}/deleted_tags")
@_for_admins
def update_deleted_tags(group: Group) -> ResponseReturnValue:
    """Serve or refuse a cached tag upstream deleted; empty: the instance's default."""
    policy = request.form.get("policy", "")
    if policy not in ("serve", "refuse", ""):
        flash("Choose serve, refuse or the default.", "error")
        return _back(group)
    saved = state(None).supply_chain.set_deleted_tag_policy(group.id, policy or None)
    flash(f"Tags deleted upstream: {saved.effective} (saved).", "info")
    return _back(group)


@bp.post(f"{_PAGE}/cooldown")
@_for_admins
def update_cooldown(group: Group) -> ResponseReturnValue:
    """The group's tag cooldown; an empty field: the instance's default."""
    form = {key: request.form.get(key, "").strip() for key in ("hours", "new_tags", "digest_pulls")}
    try:
        hours = float(form["hours"]) if form["hours"] else None
    except ValueError:
        hours = -1.0
    if hours is not None and not 0 <= hours < 10**7:
        flash("Not saved: cooldown hours must be a number from 0.", "error")
        return _back(group)
    try:
        saved = state(None).supply_chain.set_cooldown(
            group.id,
            seconds=None if hours is None else round(hours * 3600),
            new_tags=form["new_tags"] or None,
            digest_pulls=form["digest_pulls"] or None,
            exempt=request.form.get("exempt", "").split(),
        )
    except InvalidCooldown as exc:
        for field, problem in exc.errors.items():
            flash(f"Not saved: {field.replace('_', ' ')} {problem}.", "error")
        return _back(group)
    hours_text = f"{saved.effective.seconds / 3600:g} hours" if saved.effective.seconds else "off"
    flash(f"Tag cooldown: {hours_text} (saved).", "info")
    return _back(group)


@bp.post(f"{_PAGE}/cooldowns/<int:hold_id>/release")
@_for_admins
def release_cooldown(group: Group, hold_id: int) -> ResponseReturnValue:
    released = state(None).supply_chain.release(group.id, hold_id, by=_username())
    if released is None:
        flash("Not released: this group has no such tag in cooldown.", "error")
    else:
        hold = released.hold
        flash(
            f"Released {hold.image}:{hold.tag}: its next pull gets {hold.pending_digest}.", "info"
        )
    return _back(group)


@bp.post(f"{_PAGE}/signature_policy")
@_for_admins
def update_signature_policy(group: Group) -> ResponseReturnValue:
    """The group's signature policy: the mode, the index rule, the keys kept, one new key,
    and the identities (one ``issuer subject [images]`` a line, ``-`` for no issuer); an
    empty mode: the instance's default."""
    gate = state(None).signatures
    if gate is None:  # pragma: no cover - the extension always wires one
        return _back(group)
    mode = request.form.get("mode", "").strip()
    if not mode:
        gate.use_default(group.id)
        flash("Signature policy: the default of the instance (saved).", "info")
        return _back(group)
    current = gate.policy(group.id)
    kept = set(request.form.getlist("keep_key"))
    keys = [
        {k: key.get(k) for k in ("name", "pem", "images")}
        for number, key in enumerate(current["keys"])
        if str(number) in kept
    ]
    pem = request.form.get("new_key_pem", "").strip()
    if pem:
        keys.append(
            {
                "name": request.form.get("new_key_name", "").strip() or None,
                "pem": pem,
                "images": request.form.get("new_key_images", "").strip() or None,
            }
        )
    try:
        identities = _identity_lines(request.form.get("identities", ""))
        document = gate.save_policy(
            group.id,
            {
                "mode": mode,
                "index_rule": request.form.get("index_rule", "index"),
                "keys": keys,
                "identities": identities,
            },
        )
    except PolicyError as error:
        flash(f"Not saved: {error}.", "error")
        return _back(group)
    flash(f"Signature policy: {document['mode']} (saved).", "info")
    return _back(group)


def _identity_lines(text: str) -> list[dict[str, str | None]]:
    """``issuer subject [images]`` a line (``-``: no issuer, an own PKI).

    :raises PolicyError: a line without both issuer and subject.
    """
    identities: list[dict[str, str | None]] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if len(words) not in (2, 3):
            raise PolicyError(
                f"identity line {number} must be an issuer and subject, then an optional"
                " image pattern (- for no issuer)"
            )
        issuer = None if words[0] == "-" else words[0]
        identities.append(
            {"issuer": issuer, "subject": words[1], "images": words[2] if len(words) > 2 else None}
        )
    return identities
