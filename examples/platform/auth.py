"""Signing in and out (Flask-Login) and the CSRF check for the platform's forms.

The CSRF defence is the synchronizer token pattern: a random token lives in the
signed session cookie and every form repeats it in a hidden field; a forged
cross-site post cannot read the cookie, so it cannot repeat the token. The
session cookie is also ``SameSite=Lax`` (see :mod:`.config`).
"""

from __future__ import annotations

import hmac
import math
import secrets
from urllib.parse import urlsplit

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
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import LoginManager, current_user, login_required, login_user, logout_user
from markupsafe import Markup
from werkzeug.wrappers import Response

from flask_dependency_proxy import state
from flask_dependency_proxy.auth.throttle import LoginRefused, LoginThrottle

from .models import User, get_by_id
from .services import verify_password

bp = Blueprint("auth", __name__)

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message_category = "info"

CSRF_SESSION_KEY = "_csrf_token"
CSRF_FIELD = "csrf_token"
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """Called on each request with the id from the session; a blocked user is signed out."""
    user = get_by_id(User, user_id)
    return user if user is not None and not user.blocked else None


def csrf_token() -> str:
    """The session's CSRF token, created on first use."""
    token = session.get(CSRF_SESSION_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def csrf_field() -> Markup:
    """The hidden input every POST form of the platform includes."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, csrf_token())


def csrf_protect() -> None:
    """``before_request`` hook: refuse a state-changing request without the session's token.

    Registered on the platform's own blueprints only; the extension's registry and
    API routes authenticate with tokens in headers, which a browser does not send
    on its own, so they need no CSRF token.
    """
    if request.method not in _UNSAFE_METHODS:
        return
    expected = session.get(CSRF_SESSION_KEY)
    sent = request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not hmac.compare_digest(
        sent.encode("utf-8"), expected.encode("utf-8")
    ):
        abort(400, description="The form has expired or came from another site. Reload and retry.")


bp.before_request(csrf_protect)


def _safe_next(target: str | None) -> str:
    """Only follow a ``next`` that stays on this site (no open redirect)."""
    if target:
        parts = urlsplit(target)
        if (
            not parts.scheme
            and not parts.netloc
            and target.startswith("/")
            and not target.startswith(("//", "/\\"))
        ):
            return target
    return url_for("views.home")


def _login_throttle() -> LoginThrottle:
    """The dependency proxy's limiter: a password guessed through this form or through
    ``docker login`` is the same guess, so both count against one limit per address."""
    return state(current_app).access.throttle


def _refused(refused: LoginRefused) -> ResponseReturnValue:
    """The form again, with no password checked: a hash per refused attempt would let
    anyone spend the server's CPU."""
    minutes = math.ceil(refused.retry_after_seconds / 60)
    flash(
        "Too many failed sign-ins from your address. "
        f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
        "error",
    )
    headers = {"Retry-After": str(refused.retry_after_seconds)}
    return render_template("login.html"), 429, headers


@bp.route("/users/sign_in", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    if request.method == "POST":
        username = request.form.get("username", "")
        throttle = _login_throttle()
        try:
            attempt = throttle.check(username, request.remote_addr)
        except LoginRefused as refused:
            return _refused(refused)
        user = verify_password(username, request.form.get("password", ""))
        if user is None:
            throttle.record_failure(attempt)
            flash("Invalid username or password.", "error")
            return render_template("login.html"), 401
        throttle.record_success(attempt)
        login_user(user)
        # A fresh CSRF token for the signed-in session.
        session.pop(CSRF_SESSION_KEY, None)
        flash(f"Signed in as {user.username}.", "info")
        return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html")


@bp.post("/users/sign_out")
@login_required
def logout() -> Response:
    logout_user()
    session.pop(CSRF_SESSION_KEY, None)
    flash("Signed out.", "info")
    return redirect(url_for("auth.login"))


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    app.register_blueprint(bp)
    # Prefixed names: a page of an extension that extends base.html may bring its
    # own ``csrf_field`` into the template context, which would shadow ours.
    app.add_template_global(csrf_token, "platform_csrf_token")
    app.add_template_global(csrf_field, "platform_csrf_field")
