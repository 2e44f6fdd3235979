"""The platform's pages: your groups, a group, personal access and deploy tokens.

A new token's secret is rendered straight into the response to the form that
created it, never flashed: flashed messages travel in the session cookie, which
is signed but readable.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Flask, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required

from . import services, tokens
from .auth import csrf_protect
from .models import (
    DeployToken,
    Group,
    Membership,
    PersonalAccessToken,
    Role,
    db,
    find_group,
    highest_role,
)

bp = Blueprint("views", __name__)
bp.before_request(csrf_protect)


def _no_store(body: str) -> ResponseReturnValue:
    """A page showing a secret: keep it out of caches and the back-button history."""
    return body, 200, {"Cache-Control": "no-store"}


def _visible_group(full_path: str) -> Group:
    """The group if the current user may see it; 404 otherwise (also for private ones)."""
    group = find_group(full_path)
    if group is None:
        abort(404)
    if current_user.is_admin or not group.private:
        return group
    if highest_role(current_user, group) is None:
        abort(404)
    return group


def _can_manage(group: Group) -> bool:
    """Owners of the group or an ancestor, and admins, manage its deploy tokens."""
    if current_user.is_admin:
        return True
    role = highest_role(current_user, group)
    return role is not None and role >= Role.OWNER


def _expires_days(raw: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise services.PlatformError("Expiry must be a whole number of days.")
    return int(raw)


@bp.get("/")
@login_required
def home() -> ResponseReturnValue:
    rows: list[tuple[Group, str | None]]
    if current_user.is_admin:
        rows = [(g, None) for g in db.session.scalars(sa.select(Group).order_by(Group.full_path))]
    else:
        rows = [
            (m.group, m.role_name)
            for m in db.session.scalars(
                sa.select(Membership)
                .join(Group)
                .where(Membership.user_id == current_user.id)
                .order_by(Group.full_path)
            )
        ]
    return render_template("home.html", rows=rows)


@bp.get("/groups/<path:full_path>")
@login_required
def group(full_path: str) -> ResponseReturnValue:
    group = _visible_group(full_path)
    members = db.session.scalars(
        sa.select(Membership)
        .join(Group)
        .where(Group.full_path.in_(group.path_chain()))
        .order_by(Membership.role.desc(), Group.full_path)
    ).all()
    return render_template(
        "group.html",
        group=group,
        members=members,
        can_manage=_can_manage(group),
        dependency_proxy_url=f"{request.script_root}/groups/{group.full_path}/-/dependency_proxy",
    )


@bp.route("/groups/<path:full_path>/-/deploy_tokens", methods=["GET", "POST"])
@login_required
def deploy_tokens(full_path: str) -> ResponseReturnValue:
    group = _visible_group(full_path)
    if not _can_manage(group):
        abort(403)
    new_token = new_secret = None
    if request.method == "POST":
        try:
            new_token, new_secret = services.create_deploy_token(
                group,
                name=request.form.get("name", ""),
                username=request.form.get("username", ""),
                scopes=request.form.getlist("scopes"),
                expires_days=_expires_days(request.form.get("expires_days", "")),
            )
        except services.PlatformError as e:
            flash(str(e), "error")
    listed = db.session.scalars(
        sa.select(DeployToken)
        .where(DeployToken.group_id == group.id)
        .order_by(DeployToken.id.desc())
    ).all()
    body = render_template(
        "deploy_tokens.html",
        group=group,
        tokens=listed,
        scopes=tokens.DEPLOY_TOKEN_SCOPES,
        new_token=new_token,
        new_secret=new_secret,
    )
    return _no_store(body) if new_secret else body


@bp.post("/groups/<path:full_path>/-/deploy_tokens/<int:token_id>/revoke")
@login_required
def revoke_deploy_token(full_path: str, token_id: int) -> ResponseReturnValue:
    group = _visible_group(full_path)
    if not _can_manage(group):
        abort(403)
    try:
        token = services.revoke_deploy_token(token_id, group=group)
    except services.PlatformError:
        abort(404)
    flash(f"Revoked deploy token {token.username}.", "info")
    return redirect(url_for(".deploy_tokens", full_path=group.full_path))


@bp.route("/-/user_settings/personal_access_tokens", methods=["GET", "POST"])
@login_required
def personal_access_tokens() -> ResponseReturnValue:
    new_token = new_secret = None
    if request.method == "POST":
        try:
            new_token, new_secret = services.create_personal_access_token(
                current_user,
                name=request.form.get("name", ""),
                scopes=request.form.getlist("scopes"),
                expires_days=_expires_days(request.form.get("expires_days", "")),
            )
        except services.PlatformError as e:
            flash(str(e), "error")
    listed = db.session.scalars(
        sa.select(PersonalAccessToken)
        .where(PersonalAccessToken.user_id == current_user.id)
        .order_by(PersonalAccessToken.id.desc())
    ).all()
    body = render_template(
        "personal_access_tokens.html",
        tokens=listed,
        scopes=tokens.PERSONAL_ACCESS_TOKEN_SCOPES,
        new_token=new_token,
        new_secret=new_secret,
    )
    return _no_store(body) if new_secret else body


@bp.post("/-/user_settings/personal_access_tokens/<int:token_id>/revoke")
@login_required
def revoke_personal_access_token(token_id: int) -> ResponseReturnValue:
    try:
        token = services.revoke_personal_access_token(token_id, owner=current_user)
    except services.PlatformError:
        abort(404)
    flash(f"Revoked personal access token {token.name!r}.", "info")
    return redirect(url_for(".personal_access_tokens"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
