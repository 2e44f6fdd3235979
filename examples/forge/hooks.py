"""What the forge does around every request, the way Pagure does it.

- A database session per request on ``flask.g.session``, opened before the request and
  closed at its teardown. The extension is given ``session=lambda: flask.g.session``,
  so a registry request uses this one session (one pooled connection), and
  :func:`outside_request` opens one the same way for CLI commands and the extension's
  background work, where no request exists.
- A strict Content-Security-Policy on every response, with a fresh nonce per request on
  ``g.csp_nonce``: every ``<style>`` and ``<script>`` must carry it, the extension's
  included (it reads ``g.csp_nonce``).
- A costly after-request hook (a full garbage collection, and the visitor's session
  refreshed, which sets a cookie) that
  :func:`flask_dependency_proxy.is_registry_request` keeps off registry traffic: a
  ``docker pull`` is many small requests, none of which needs either.
"""

from __future__ import annotations

import contextlib
import gc
import secrets
import time
import typing as t

from flask import Flask, Response, current_app, g, session
from sqlalchemy.orm import Session, sessionmaker

from flask_dependency_proxy import is_registry_request

_SESSIONS = "forge.sessions"
POLICY = "default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'"


def init_app(app: Flask, sessions: sessionmaker[Session]) -> None:
    """Register the hooks; before the extension, so ``g.session`` exists for its own."""
    app.extensions[_SESSIONS] = sessions
    app.before_request(open_session)
    app.before_request(new_csp_nonce)
    app.after_request(content_security_policy)
    app.after_request(housekeeping)
    app.teardown_request(close_session)


def open_session() -> None:
    g.session = current_app.extensions[_SESSIONS]()


def close_session(_error: BaseException | None = None) -> None:
    opened = g.pop("session", None)
    if opened is not None:
        opened.close()


@contextlib.contextmanager
def outside_request() -> t.Iterator[Session]:
    """``g.session`` for work outside a request: the forge's CLI, and the extension's
    (its commands, the cleanup scheduler), which enters this inside an app context."""
    if "session" in g:  # already inside one (a forge command calling the extension)
        yield g.session
        return
    open_session()
    try:
        yield g.session
    finally:
        close_session()


def new_csp_nonce() -> None:
    g.csp_nonce = secrets.token_urlsafe(18)


def content_security_policy(response: Response) -> Response:
    # A request refused by an earlier hook never got its nonce: it gets one now.
    nonce = g.setdefault("csp_nonce", secrets.token_urlsafe(18))
    # Added, not set: a policy the extension added (frame-ancestors) stays.
    response.headers.add("Content-Security-Policy", POLICY.format(nonce=nonce))
    return response


def housekeeping(response: Response) -> Response:
    """Collect garbage and refresh the visitor's session, except on registry requests."""
    if is_registry_request():
        return response
    gc.collect()
    session["seen"] = int(time.time())
    return response
