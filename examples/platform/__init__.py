"""A small git platform that hosts flask-dependency-proxy.

Run it from the repository root::

    flask --app examples.platform init-db
    flask --app examples.platform run
    gunicorn 'examples.platform:create_app()'

It has users with passwords, nested groups with memberships, personal access
tokens, group deploy tokens, projects and CI jobs with job tokens; see
:mod:`.host` for how they map onto the extension's access rules.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

from flask import Flask, Response

from . import auth, cli, views
from .config import load_config
from .extensions import db, proxy

__all__ = ["create_app", "db", "proxy"]

#: No page of the platform may be framed: its one-click forms would be clickjackable.
FRAMING_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}


def create_app(test_config: Mapping[str, t.Any] | None = None) -> Flask:
    """Build the platform app; ``test_config`` overrides the environment."""
    app = Flask(__name__, instance_relative_config=True)
    load_config(app, test_config)
    db.init_app(app)
    auth.init_app(app)
    views.init_app(app)
    proxy.init_app(app)
    cli.init_app(app)
    app.after_request(forbid_framing)
    return app


def forbid_framing(response: Response) -> Response:
    for name, value in FRAMING_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
