"""Configuration from the environment, the way an operator sets it.

* ``DATABASE_URL``: any SQLAlchemy URL. ``postgresql://`` and ``postgres://`` are
  pointed at the psycopg 3 driver. Default: SQLite in the instance folder.
* ``DATABASE_CONNECT_TIMEOUT_SECONDS`` (PostgreSQL, default 5): psycopg's
  ``connect_timeout``, how long opening a new connection may take.
* ``DATABASE_POOL_TIMEOUT_SECONDS`` (default 5): SQLAlchemy's ``pool_timeout``, how
  long a request waits for a free pooled connection. With these two, a database that
  is down or refuses connections fails a request within seconds; a hung one is bounded
  by ``DEPENDENCY_PROXY_DATABASE_TIMEOUT_SECONDS`` under the gevent worker.
* ``SECRET_KEY`` (required): signs sessions, and the extension derives its token
  key from it. Without it the app refuses to start, except in debug or testing mode,
  where each process makes a random key of its own (sessions and registry tokens then
  do not survive a restart and are not shared between processes).
* ``TRUSTED_HOSTS``: comma-separated host names (Flask's ``TRUSTED_HOSTS``); requests
  with another ``Host`` are refused. Needed behind a reverse proxy when
  ``DEPENDENCY_PROXY_EXTERNAL_URL`` is not set (see the README).
* ``PASSWORD_HASH_METHOD`` (``test_config`` only): Werkzeug's password hash
  method, ``scrypt`` by default.
* ``DEPENDENCY_PROXY_*``: copied into ``app.config`` for the extension and for
  :mod:`.host` (``DEPENDENCY_PROXY_MIN_READ_ROLE``, ``DEPENDENCY_PROXY_ADMIN_ROLE``).
"""

from __future__ import annotations

import os
import re
import secrets
import typing as t
from collections.abc import Mapping

from flask import Flask

from .models import Role

ENV_PREFIX = "DEPENDENCY_PROXY_"
#: Keys whose values stay strings even when they look like numbers (a password
#: of digits, a path called ``1``).
_STRING_SUFFIXES = ("_URL", "_PATH", "_USERNAME", "_PASSWORD", "_KEY", "_SECRET", "_ROLE")
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")
#: Defaults of ``DATABASE_CONNECT_TIMEOUT_SECONDS`` and ``DATABASE_POOL_TIMEOUT_SECONDS``.
CONNECT_TIMEOUT_SECONDS = 5
POOL_TIMEOUT_SECONDS = 5


def parse_env_value(key: str, raw: str) -> str | int | float | bool:
    """Turn an environment string into the type the key most likely wants.

    ``true``/``false`` (any case) become booleans, ``30`` an int, ``2.5`` a float;
    anything else, and every key ending in one of :data:`_STRING_SUFFIXES`, stays
    a string.
    """
    if key.endswith(_STRING_SUFFIXES):
        return raw
    value = raw.strip()
    if value.lower() in {"true", "false"}:
        return value.lower() == "true"
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return raw


def database_url(url: str) -> str:
    """Point plain PostgreSQL URLs at psycopg 3; SQLAlchemy would pick psycopg2."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def _timeout(environ: Mapping[str, str], key: str, default: float) -> float:
    raw = environ.get(key, "").strip()
    if not raw:
        return default
    if not _FLOAT.fullmatch(raw) or float(raw) <= 0:
        raise ValueError(f"{key} must be a positive number of seconds, not {raw!r}")
    return float(raw)


def _engine_options(app: Flask, environ: Mapping[str, str]) -> dict[str, t.Any]:
    """Engine options for a database server (not SQLite)."""
    options: dict[str, t.Any] = {
        # Gunicorn workers live long; drop connections the server closed meanwhile
        # (a restart of PostgreSQL), so the next request gets a fresh one.
        "pool_pre_ping": True,
        "pool_timeout": _timeout(environ, "DATABASE_POOL_TIMEOUT_SECONDS", POOL_TIMEOUT_SECONDS),
    }
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg"):
        seconds = _timeout(environ, "DATABASE_CONNECT_TIMEOUT_SECONDS", CONNECT_TIMEOUT_SECONDS)
        # libpq counts whole seconds and takes at least 2.
        options["connect_args"] = {"connect_timeout": max(2, round(seconds))}
    return options


class MissingSecretKey(RuntimeError):
    """The platform was started for production without ``SECRET_KEY``."""


def trusted_hosts(raw: str) -> list[str]:
    """``"a.example, .b.example"`` → ``["a.example", ".b.example"]``."""
    return [name.strip() for name in raw.split(",") if name.strip()]


def _secret_key(app: Flask) -> str:
    """The configured key; in debug or testing mode a random one for this process."""
    key = app.config.get("SECRET_KEY")
    if key:
        return t.cast(str, key)
    if not (app.debug or app.testing):
        raise MissingSecretKey(
            "SECRET_KEY is not set. It signs sessions and registry tokens: set the"
            " SECRET_KEY environment variable to a long random value, for example the"
            ' output of: python -c "import secrets; print(secrets.token_urlsafe(48))"'
        )
    app.logger.warning(
        "SECRET_KEY is not set; using a random key for this process (debug or testing"
        " mode). Sessions and registry tokens end when it exits."
    )
    return secrets.token_urlsafe(48)


def load_config(
    app: Flask,
    test_config: Mapping[str, t.Any] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Fill ``app.config``: defaults, then the environment, then ``test_config``.

    :raises ValueError: for a role setting that names no role.
    :raises MissingSecretKey: without ``SECRET_KEY`` outside debug and testing mode.
    """
    overrides = dict(test_config or {})
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    for key, raw in environ.items():
        if key.startswith(ENV_PREFIX):
            app.config[key] = parse_env_value(key, raw)
    if "SECRET_KEY" in environ:
        app.config["SECRET_KEY"] = environ["SECRET_KEY"]
    if "TRUSTED_HOSTS" in environ:
        app.config["TRUSTED_HOSTS"] = trusted_hosts(environ["TRUSTED_HOSTS"]) or None

    url = (
        overrides.pop("DATABASE_URL", None)
        or overrides.pop("SQLALCHEMY_DATABASE_URI", None)
        or environ.get("DATABASE_URL")
    )
    if not url:
        os.makedirs(app.instance_path, exist_ok=True)
        url = "sqlite:///" + os.path.join(app.instance_path, "platform.sqlite3")
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url(url)
    app.config.update(overrides)
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", _engine_options(app, environ))

    app.config["SECRET_KEY"] = _secret_key(app)

    for key in ("DEPENDENCY_PROXY_MIN_READ_ROLE", "DEPENDENCY_PROXY_ADMIN_ROLE"):
        if key in app.config:
            try:
                Role.parse(app.config[key])
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
