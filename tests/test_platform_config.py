"""The example platform's configuration from the environment."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from examples.platform import create_app
from examples.platform.config import (
    MissingSecretKey,
    database_url,
    load_config,
    parse_env_value,
)
from tests.platform_fixtures import platform_env_keys

REPO_ROOT = Path(__file__).resolve().parents[1]
GUNICORN_CONF = REPO_ROOT / "examples" / "gunicorn.conf.py"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in platform_env_keys():
        monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("DEPENDENCY_PROXY_ENABLED", "true", True),
        ("DEPENDENCY_PROXY_ENABLED", "FALSE", False),
        ("DEPENDENCY_PROXY_TOKEN_TTL", "600", 600),
        ("DEPENDENCY_PROXY_UPSTREAM_RETRIES", "-1", -1),
        ("DEPENDENCY_PROXY_UPSTREAM_READ_TIMEOUT_SECONDS", "2.5", 2.5),
        ("DEPENDENCY_PROXY_MIN_READ_ROLE", "reporter", "reporter"),
        ("DEPENDENCY_PROXY_ADMIN_ROLE", "40", "40"),
        # Credentials and locations stay strings even when they look like numbers.
        ("DEPENDENCY_PROXY_UPSTREAM_PASSWORD", "123456", "123456"),
        ("DEPENDENCY_PROXY_UPSTREAM_USERNAME", "true", "true"),
        ("DEPENDENCY_PROXY_STORAGE_PATH", "1", "1"),
        ("DEPENDENCY_PROXY_UPSTREAM_URL", "http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("DEPENDENCY_PROXY_TRUSTED_PROXIES", "1", 1),
    ],
)
def test_parse_env_value(key: str, raw: str, value: object) -> None:
    parsed = parse_env_value(key, raw)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@db:5432/platform", "postgresql+psycopg://u:p@db:5432/platform"),
        ("postgres://u@db/platform", "postgresql+psycopg://u@db/platform"),
        ("postgresql+psycopg://u@db/p", "postgresql+psycopg://u@db/p"),
        ("sqlite:////tmp/x.sqlite3", "sqlite:////tmp/x.sqlite3"),
    ],
)
def test_database_url_uses_psycopg_3(url: str, expected: str) -> None:
    assert database_url(url) == expected


def test_environment_configures_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'env.sqlite3'}")
    monkeypatch.setenv("SECRET_KEY", "from-env")
    monkeypatch.setenv("DEPENDENCY_PROXY_TOKEN_TTL", "120")
    monkeypatch.setenv("DEPENDENCY_PROXY_STORAGE_PATH", str(tmp_path / "store"))
    monkeypatch.setenv("DEPENDENCY_PROXY_GROUP_DEFAULT_ENABLED", "true")
    app = create_app()
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'env.sqlite3'}"
    assert app.config["SECRET_KEY"] == "from-env"
    assert app.config["DEPENDENCY_PROXY_TOKEN_TTL"] == 120
    assert app.config["DEPENDENCY_PROXY_GROUP_DEFAULT_ENABLED"] is True


def test_test_config_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nowhere/db")
    monkeypatch.setenv("DEPENDENCY_PROXY_TOKEN_TTL", "120")
    monkeypatch.setenv("SECRET_KEY", "from-env")
    app = Flask("examples.platform")
    load_config(
        app,
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}", "DEPENDENCY_PROXY_TOKEN_TTL": 60},
    )
    assert app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")
    assert app.config["DEPENDENCY_PROXY_TOKEN_TTL"] == 60


def test_without_secret_key_the_platform_refuses_to_start(tmp_path: Path) -> None:
    app = Flask("examples.platform", instance_path=str(tmp_path / "instance"))
    with pytest.raises(MissingSecretKey, match="SECRET_KEY is not set.*environment variable"):
        load_config(app, {})
    with pytest.raises(MissingSecretKey):
        load_config(app, {"SECRET_KEY": ""})


@pytest.mark.process
def test_gunicorn_without_secret_key_exits_with_the_message(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in platform_env_keys()}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'gunicorn.sqlite3'}",
        DEPENDENCY_PROXY_STORAGE_PATH=str(tmp_path / "store"),
    )
    env.pop("FLASK_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF),
         "--bind", "127.0.0.1:0", "--workers", "1", "examples.platform:create_app()"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stdout + result.stderr


@pytest.mark.parametrize("mode", ["DEBUG", "TESTING"])
def test_debug_and_testing_mode_use_a_random_key_per_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    keys = set()
    for _ in range(2):
        app = Flask("examples.platform", instance_path=str(tmp_path / "instance"))
        with caplog.at_level(logging.WARNING):
            load_config(app, {mode: True})
        keys.add(app.config["SECRET_KEY"])
    assert len(keys) == 2 and all(len(key) >= 32 for key in keys)
    assert "SECRET_KEY is not set; using a random key" in caplog.text
    # The default database lives in the instance folder.
    assert app.config["SQLALCHEMY_DATABASE_URI"] == (
        f"sqlite:///{tmp_path / 'instance' / 'platform.sqlite3'}"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("registry.example.com", ["registry.example.com"]),
        (" a.example , .b.example,", ["a.example", ".b.example"]),
        ("", None),
    ],
)
def test_trusted_hosts_from_the_environment(
    tmp_path: Path, raw: str, expected: list[str] | None
) -> None:
    app = Flask("examples.platform")
    load_config(
        app,
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}", "SECRET_KEY": "k"},
        environ={"TRUSTED_HOSTS": raw, "DEPENDENCY_PROXY_TRUSTED_PROXIES": "2"},
    )
    assert app.config["TRUSTED_HOSTS"] == expected
    assert app.config["DEPENDENCY_PROXY_TRUSTED_PROXIES"] == 2


def test_a_role_setting_that_names_no_role_fails_at_startup(tmp_path: Path) -> None:
    app = Flask("examples.platform")
    with pytest.raises(ValueError, match="DEPENDENCY_PROXY_ADMIN_ROLE: Unknown role 'boss'"):
        load_config(
            app,
            {
                "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}",
                "SECRET_KEY": "k",
                "DEPENDENCY_PROXY_ADMIN_ROLE": "boss",
            },
        )


@pytest.mark.process
def test_flask_cli_runs_from_the_repository_root(tmp_path: Path) -> None:
    """``flask --app examples.platform`` as operators type it, configured by the environment."""
    env = {key: value for key, value in os.environ.items() if key not in platform_env_keys()}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'cli.sqlite3'}",
        SECRET_KEY="cli-test",
        DEPENDENCY_PROXY_STORAGE_PATH=str(tmp_path / "store"),
    )

    def flask(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flask", "--app", "examples.platform", *args],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    assert flask("init-db").returncode == 0
    assert flask("user", "create", "alice", "--password", "pw").returncode == 0
    created = flask("token", "create", "alice", "--scopes", "api")
    assert created.returncode == 0, created.stderr
    assert created.stdout.rstrip().rsplit("\n", 1)[-1].startswith("dppat-")
    missing = flask("group", "create", "a/b")
    assert missing.returncode == 1
    assert "Parent group 'a' does not exist" in missing.stderr
