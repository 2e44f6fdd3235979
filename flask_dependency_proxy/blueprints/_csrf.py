"""Cross-site request forgery: the extension's own token, and a host's Flask-WTF.

The group pages' forms carry the extension's own token (:func:`csrf_field`), and the REST
API takes the same token in ``X-CSRF-Token`` from a request signed in with the session
cookie; it lives in the session and is compared in constant time.

``CSRFProtect`` checks every POST, PUT, PATCH and DELETE of the app for its own token. None
of the extension's routes carries it, and none needs it: the registry and token routes
take no cookies (Basic or Bearer credentials; ``docker login`` through containerd POSTs a
form to ``/jwt/auth``), the REST API takes a token or a session with the extension's own
``X-CSRF-Token``, and the pages check their own form token. So the extension exempts its
blueprints, whether ``CSRFProtect`` was set up before ``init_app`` or after it.

Knows nothing of Flask-WTF but its documented ``exempt`` and ``app.extensions["csrf"]``.
"""

from __future__ import annotations

import hmac
import secrets
import typing as t

from flask import Flask, session
from flask.sansio.blueprints import Blueprint
from markupsafe import Markup

#: Where the extension keeps its CSRF token in the session, and the form field name.
CSRF_SESSION_KEY = "_dependency_proxy_csrf"
CSRF_FIELD = "dependency_proxy_csrf_token"
#: The same token, for scripts that call the REST API with the session cookie.
CSRF_HEADER = "X-CSRF-Token"


class CsrfRejected(Exception):
    """A form came without the session's CSRF token."""


def csrf_token() -> str:
    """The session's token, created on first use."""
    token = session.get(CSRF_SESSION_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def csrf_field() -> Markup:
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, csrf_token())


def csrf_valid(sent: str | None) -> bool:
    expected = session.get(CSRF_SESSION_KEY)
    if not isinstance(expected, str) or not sent:
        return False
    return hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode("utf-8"))


def exempt_from_host_csrf(app: Flask, blueprints: t.Iterable[Blueprint]) -> None:
    """Exempt ``blueprints`` from the app's ``CSRFProtect``, now if it is there, else
    on the first request, before its check runs (app-level ``before_request`` functions
    run in the order they were added, and this one comes first)."""
    ours = tuple(blueprints)

    def exempt() -> None:
        protect = app.extensions.get("csrf")
        if protect is not None and callable(getattr(protect, "exempt", None)):
            for blueprint in ours:
                protect.exempt(blueprint)

    if "csrf" in app.extensions:
        exempt()
        return
    pending = True

    def exempt_once() -> None:
        # No setup method may run after the first request, so once is enough.
        nonlocal pending
        if pending:
            pending = False
            exempt()

    app.before_request(exempt_once)
