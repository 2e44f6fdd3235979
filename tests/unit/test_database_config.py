"""``DEPENDENCY_PROXY_DATABASE_TIMEOUT_SECONDS`` and the example platform's engine options
(connect and pool timeouts) that bound a request when the database is down."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask

from examples.platform.config import load_config as load_platform_config
from flask_dependency_proxy.config import ConfigError, load_config


def _proxy_config(tmp_path: Path, **values: t.Any) -> t.Any:
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config.update(values)
    return load_config(app)


def test_the_deadline_defaults_to_five_seconds(tmp_path: Path) -> None:
    assert _proxy_config(tmp_path).database_timeout_seconds == 5.0
    config = _proxy_config(tmp_path, DEPENDENCY_PROXY_DATABASE_TIMEOUT_SECONDS="2.5")
    assert config.database_timeout_seconds == 2.5
    assert (
        _proxy_config(
            tmp_path, DEPENDENCY_PROXY_DATABASE_TIMEOUT_SECONDS=0
        ).database_timeout_seconds
        == 0
    )


@pytest.mark.parametrize("value", [-1, "soon", True])
def test_a_bad_deadline_fails_the_start(tmp_path: Path, value: t.Any) -> None:
    with pytest.raises(ConfigError, match="DEPENDENCY_PROXY_DATABASE_TIMEOUT_SECONDS"):
        _proxy_config(tmp_path, DEPENDENCY_PROXY_DATABASE_TIMEOUT_SECONDS=value)


def _engine_options(tmp_path: Path, url: str, **environ: str) -> t.Any:
    app = Flask(__name__, instance_path=str(tmp_path))
    load_platform_config(app, {"DATABASE_URL": url}, environ={"SECRET_KEY": "x", **environ})
    return app.config.get("SQLALCHEMY_ENGINE_OPTIONS")


def test_postgresql_gets_connect_and_pool_timeouts(tmp_path: Path) -> None:
    options = _engine_options(tmp_path, "postgresql://db.internal/platform")
    assert options == {
        "pool_pre_ping": True,
        "pool_timeout": 5,
        "connect_args": {"connect_timeout": 5},
    }
    options = _engine_options(
        tmp_path,
        "postgresql://db.internal/platform",
        DATABASE_CONNECT_TIMEOUT_SECONDS="3",
        DATABASE_POOL_TIMEOUT_SECONDS="1.5",
    )
    assert options["connect_args"] == {"connect_timeout": 3}
    assert options["pool_timeout"] == 1.5


def test_sqlite_has_no_server_options(tmp_path: Path) -> None:
    assert _engine_options(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}") is None


def test_a_bad_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DATABASE_POOL_TIMEOUT_SECONDS"):
        _engine_options(tmp_path, "postgresql://db/x", DATABASE_POOL_TIMEOUT_SECONDS="0")
