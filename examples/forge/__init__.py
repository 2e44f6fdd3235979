"""A small Flask forge that hosts flask-dependency-proxy the way Pagure would.

Unlike :mod:`examples.platform` it has what real forges that were not written for the
extension have:

- plain SQLAlchemy (:mod:`.models`), no Flask-SQLAlchemy, and a session per request on
  ``flask.g.session`` (:mod:`.hooks`);
- a strict Content-Security-Policy with a nonce per request (``g.csp_nonce``);
- a base template, ``master.html``, whose head block is called ``header_css``;
- a costly after-request hook, kept off registry traffic with
  :func:`flask_dependency_proxy.is_registry_request`;
- group names in mixed case (``DevOps``), and groups that are deleted, which
  :func:`.services.delete_group` reports with ``proxy.forget_group(group_id)``.

Run it from the repository root::

    export SECRET_KEY=change-me DATABASE_URL=sqlite:////tmp/forge.sqlite3
    flask --app examples.forge init-db
    flask --app examples.forge user create alice --password alice-pw
    flask --app examples.forge group create DevOps --owner alice
    flask --app examples.forge dependency-proxy enable devops
    gunicorn -c examples/gunicorn.conf.py -b 127.0.0.1:5000 'examples.forge:create_app()'
"""

from __future__ import annotations

import os
import typing as t
from collections.abc import Mapping

import flask
from sqlalchemy.orm import sessionmaker

from flask_dependency_proxy import DependencyProxy

from . import cli, hooks, services, views
from .host import ForgeHost
from .models import make_engine

__all__ = ["create_app"]

#: Where the extension's pages meet the forge's templates.
PROXY_DEFAULTS = {
    "DEPENDENCY_PROXY_BASE_TEMPLATE": "master.html",
    "DEPENDENCY_PROXY_HEAD_BLOCK": "header_css",
    "DEPENDENCY_PROXY_LOGIN_VIEW": "forge.login",
}


def create_app(test_config: Mapping[str, t.Any] | None = None) -> flask.Flask:
    """Build the forge from the environment; ``test_config`` overrides it."""
    app = flask.Flask(__name__, instance_relative_config=True)
    load_config(app, test_config)

    engine = make_engine(app.config["DATABASE_URL"])
    app.extensions[services.ENGINE] = engine
    # The forge's hooks first: its before-request hook opens g.session, which the
    # extension's hooks and views use.
    hooks.init_app(app, sessionmaker(engine))
    views.init_app(app)
    cli.init_app(app)
    app.extensions[services.PROXY] = DependencyProxy(
        app,
        session=lambda: flask.g.session,
        engine=engine,
        host=ForgeHost(),
        outside_request=hooks.outside_request,
    )
    return app


def load_config(app: flask.Flask, test_config: Mapping[str, t.Any] | None) -> None:
    """``SECRET_KEY``, ``DATABASE_URL``, ``FORGE_ADMINS`` (comma-separated usernames) and
    every ``DEPENDENCY_PROXY_*`` variable, as text (the extension parses its own)."""
    environ = {**os.environ, **(test_config or {})}
    app.config.update(PROXY_DEFAULTS)
    app.config.update((k, v) for k, v in environ.items() if k.startswith("DEPENDENCY_PROXY_"))
    app.config.update(test_config or {})
    if not environ.get("SECRET_KEY"):
        raise RuntimeError("Set SECRET_KEY: it signs the forge's sessions and registry tokens.")
    app.config["SECRET_KEY"] = environ["SECRET_KEY"]
    url = environ.get("DATABASE_URL")
    if not url:
        os.makedirs(app.instance_path, exist_ok=True)
        url = f"sqlite:///{app.instance_path}/forge.sqlite3"
    app.config["DATABASE_URL"] = url.replace("postgresql://", "postgresql+psycopg://", 1)
    admins = environ.get("FORGE_ADMINS", "")
    app.config["FORGE_ADMINS"] = (
        frozenset(admins.split(",")) - {""} if isinstance(admins, str) else frozenset(admins)
    )
