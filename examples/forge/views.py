"""The forge's own pages: sign in and out, the groups, a group's members and its deletion.

Forms carry a per-session CSRF token (``csrf_field()`` in the templates). The
extension's pages extend ``master.html`` and put their styles into its
``header_css`` block (``DEPENDENCY_PROXY_HEAD_BLOCK``).
"""

from __future__ import annotations

import hmac
import secrets

import sqlalchemy as sa
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
)
from flask.typing import ResponseReturnValue
from markupsafe import Markup
from werkzeug.security import check_password_hash

from . import models, services

bp = Blueprint("forge", __name__, template_folder="templates")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.jinja_env.globals.update(csrf_field=csrf_field, current_user=current_user)


def current_user() -> models.User | None:
    user_id = session.get("user_id")
    user = services.db().get(models.User, user_id) if isinstance(user_id, int) else None
    return user if user and not user.blocked else None


def csrf_field() -> Markup:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return Markup('<input type="hidden" name="csrf" value="{}">').format(session["csrf"])


@bp.before_request
def _check_csrf() -> None:
    if request.method == "POST":
        sent, expected = request.form.get("csrf", ""), session.get("csrf", "")
        if not expected or not hmac.compare_digest(sent, expected):
            abort(400, "The form expired or came from another site; reload the page.")


@bp.get("/")
def index() -> ResponseReturnValue:
    groups = services.db().scalars(sa.select(models.Group).order_by(models.Group.name)).all()
    return render_template("index.html", groups=groups)


@bp.route("/login/", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    if request.method == "POST":
        user = services.user_named(request.form.get("username", ""))
        password = request.form.get("password", "")
        if user and not user.blocked and check_password_hash(user.password_hash, password):
            session.clear()
            session["user_id"] = user.id
            back = request.args.get("next", "/")
            local = back.startswith("/") and not back.startswith(("//", "/\\"))
            return redirect(back if local else "/")  # a path of this site, nothing else
        flash("Wrong username or password, or the account is blocked.", "error")
    return render_template("login.html")


@bp.post("/logout/")
def logout() -> ResponseReturnValue:
    session.clear()
    return redirect("/")


@bp.get("/group/<name>")
def group(name: str) -> ResponseReturnValue:
    found = services.group_named(name)
    if found is None:
        abort(404)
    return render_template("group.html", group=found, may_delete=_may_delete(found))


@bp.post("/group/<name>/delete")
def delete_group(name: str) -> ResponseReturnValue:
    found = services.group_named(name)
    if found is None or not _may_delete(found):
        abort(404)
    services.delete_group(found.name)
    flash(f"Group {found.name} deleted.", "info")
    return redirect("/")


def _may_delete(group: models.Group) -> bool:
    user = current_user()
    return user is not None and (
        user.id == group.owner_id or user.username in current_app.config["FORGE_ADMINS"]
    )
