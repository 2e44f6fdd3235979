"""The extension's routes and a host's Flask-WTF ``CSRFProtect``.

``CSRFProtect`` checks every POST, PUT, PATCH and DELETE of the app for its own token. None
of the extension's routes carries it, and none needs it: the registry and token routes
take no cookies (Basic or Bearer credentials; ``docker login`` through containerd POSTs a
form to ``/jwt/auth``), the REST API takes a token or a session with the extension's own
``X-CSRF-Token``, and the pages check their own form token. So the extension exempts its
blueprints, whether ``CSRFProtect`` was set up before ``init_app`` or after it.

Knows nothing of Flask-WTF but its documented ``exempt`` and ``app.extensions["csrf"]``.
"""

from __future__ import annotations

import typing as t

from flask import Flask
from flask.sansio.blueprints import Blueprint


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
