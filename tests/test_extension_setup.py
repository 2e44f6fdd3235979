"""Registering the extension: configuration is validated at ``init_app``, not at the
first pull, and mistakes in wiring fail with a message that says what to do."""

from __future__ import annotations

import json
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from examples.platform.host import PlatformHost
from flask_dependency_proxy import ConfigError, DependencyProxy, state
from tests.platform_fixtures import build_world, dispose, make_app
from tests.support import images
from tests.support.registry import Registry


def _app(tmp_path: Path, **config: t.Any) -> tuple[Flask, SQLAlchemy]:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        SECRET_KEY="k", SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/db.sqlite", **config
    )
    db = SQLAlchemy()
    db.init_app(app)
    return app, db


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("DEPENDENCY_PROXY_UPSTREAM_URL", "ftp://example.com", "http:// or https://"),
        ("DEPENDENCY_PROXY_UPSTREAM_URL", "https://example.com/?x=1", "query"),
        ("DEPENDENCY_PROXY_EXTERNAL_URL", "example.com", "http:// or https://"),
        ("DEPENDENCY_PROXY_TOKEN_TTL", "soon", "must be a number"),
        ("DEPENDENCY_PROXY_TOKEN_TTL", 0, "at least 1"),
        ("DEPENDENCY_PROXY_ENABLED", "maybe", "true or false"),
        ("DEPENDENCY_PROXY_UPSTREAM_READ_TIMEOUT_SECONDS", -1, "at least"),
        ("DEPENDENCY_PROXY_UPSTREAM_USERNAME", "only-a-name", "UPSTREAM_PASSWORD"),
        ("DEPENDENCY_PROXY_X_ACCEL_REDIRECT_PREFIX", "no-slashes", "starts and ends with '/'"),
        ("DEPENDENCY_PROXY_BLOB_CHUNK_SIZE", 100, "0 (sendfile) or between"),
        ("DEPENDENCY_PROXY_BLOB_CHUNK_SIZE", "1e9", "must be a number"),
        ("DEPENDENCY_PROXY_CLIENT_SEND_TIMEOUT_SECONDS", -1, "must be at least 0"),
        ("DEPENDENCY_PROXY_CSP_NONCE", "nonce_of_request", "'module:function'"),
        ("DEPENDENCY_PROXY_CSP_NONCE", 42, "'module:function'"),
        ("DEPENDENCY_PROXY_CSP_NONCE", "no_such_module_27:nonce", "cannot import"),
        ("DEPENDENCY_PROXY_CSP_NONCE", "flask:no_such_function", "cannot import"),
        ("DEPENDENCY_PROXY_CSP_NONCE", "flask.json:provider", "not callable"),
        ("DEPENDENCY_PROXY_HEAD_BLOCK", "extra head", "a Jinja block name"),
        ("DEPENDENCY_PROXY_HEAD_BLOCK", "content", "other than 'title' and 'content'"),
        ("DEPENDENCY_PROXY_SIGNATURE_MODE", "strict", "one of"),
        ("DEPENDENCY_PROXY_SIGNATURE_MODE", "enforce", "needs at least one trusted key"),
        ("DEPENDENCY_PROXY_SIGNATURE_SIGNERS", "{keys: []}", "must be a JSON object"),
        ("DEPENDENCY_PROXY_SIGNATURE_SIGNERS", '{"keys": [{"pem": "/no/such.pub"}]}', "readable"),
        ("DEPENDENCY_PROXY_SIGNATURE_SIGNERS", '{"keys": [{"pem": "-----BEGIN x"}]}', "not a PEM"),
        ("DEPENDENCY_PROXY_SIGNATURE_SIGNERS", '{"index_rule": "each"}', "index_rule must be"),
    ],
)
def test_bad_configuration_fails_at_init_app(
    tmp_path: Path, key: str, value: t.Any, message: str
) -> None:
    app, db = _app(tmp_path, **{key: value})
    with pytest.raises(ConfigError, match=key) as info:
        DependencyProxy(app, db=db, host=PlatformHost())
    assert message in str(info.value)


def test_string_values_from_the_environment_are_parsed(tmp_path: Path) -> None:
    app, db = _app(
        tmp_path,
        DEPENDENCY_PROXY_ENABLED="false",
        DEPENDENCY_PROXY_TOKEN_TTL="60",
        DEPENDENCY_PROXY_UPSTREAM_URL="http://127.0.0.1:5001/",
    )
    DependencyProxy(app, db=db, host=PlatformHost())
    config = state(app).config
    assert (config.enabled, config.token_ttl, config.upstream_url) == (
        False,
        60,
        "http://127.0.0.1:5001",
    )
    # Switched off: no registry routes at all.
    assert app.test_client().get("/v2/").status_code == 404


def test_the_instance_signature_policy_reads_keys_inline_or_from_files(tmp_path: Path) -> None:
    vector = Path(__file__).parent / "data" / "cosign" / "cimage-key-valid"
    signers = {
        "keys": [
            {"name": "from-file", "pem": str(vector / "cosign.pub"), "images": "team/*"},
            {"name": "inline", "pem": (vector / "cosign2.pub").read_text()},
        ],
        "index_rule": "platforms",
    }
    app, db = _app(
        tmp_path,
        DEPENDENCY_PROXY_SIGNATURE_MODE="warn",
        DEPENDENCY_PROXY_SIGNATURE_SIGNERS=json.dumps(signers),
    )
    DependencyProxy(app, db=db, host=PlatformHost())
    gate = state(app).signatures
    assert gate is not None
    document = gate.default_document
    assert (document["mode"], document["index_rule"]) == ("warn", "platforms")
    assert [(k["name"], k["pem"], k["images"]) for k in document["keys"]] == [
        ("from-file", (vector / "cosign.pub").read_text().strip(), "team/*"),
        ("inline", (vector / "cosign2.pub").read_text().strip(), None),
    ]
    assert gate.default.mode == "warn" and len(gate.default.keys) == 2


SECRET_IN_URL = "tok-0123456789"


@pytest.mark.parametrize(
    ("config", "key", "instead"),
    [
        (
            {"DEPENDENCY_PROXY_UPSTREAM_URL": f"https://robot:{SECRET_IN_URL}@registry.example"},
            "DEPENDENCY_PROXY_UPSTREAM_URL",
            "DEPENDENCY_PROXY_UPSTREAM_USERNAME and DEPENDENCY_PROXY_UPSTREAM_PASSWORD",
        ),
        (
            {
                "DEPENDENCY_PROXY_UPSTREAMS": {
                    "ghcr": {"url": f"https://robot:{SECRET_IN_URL}@ghcr.io"},
                }
            },
            "DEPENDENCY_PROXY_UPSTREAMS['ghcr'].url",
            "its 'username' and 'password'",
        ),
        (
            # A token alone, no user name: still a credential in the URL.
            {"DEPENDENCY_PROXY_UPSTREAMS": f'{{"hub": {{"url": "https://{SECRET_IN_URL}@x.io"}}}}'},
            "DEPENDENCY_PROXY_UPSTREAMS['hub'].url",
            "its 'username' and 'password'",
        ),
    ],
    ids=["upstream-url", "upstreams-entry", "upstreams-json"],
)
def test_credentials_inside_an_upstream_url_are_refused(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    config: dict[str, t.Any],
    key: str,
    instead: str,
) -> None:
    """They would be logged at start and shown to every group owner with the URL."""
    app, db = _app(tmp_path, **config)
    with pytest.raises(ConfigError) as info:
        DependencyProxy(app, db=db, host=PlatformHost())
    message = str(info.value)
    assert message.startswith(f"{key} must not carry credentials"), message
    assert f"set {instead} instead" in message, message
    assert SECRET_IN_URL not in message and SECRET_IN_URL not in caplog.text


def test_group_labelled_metrics_need_the_metrics_token(tmp_path: Path) -> None:
    """Group paths name private groups: without a token anyone who reaches the route
    would read them."""
    labelled = {
        "DEPENDENCY_PROXY_METRICS_ENABLED": True,
        "DEPENDENCY_PROXY_METRICS_GROUP_LABELS": "true",
    }
    app, db = _app(tmp_path / "open", **labelled)
    with pytest.raises(ConfigError, match="DEPENDENCY_PROXY_METRICS_GROUP_LABELS") as info:
        DependencyProxy(app, db=db, host=PlatformHost())
    assert "DEPENDENCY_PROXY_METRICS_TOKEN" in str(info.value)

    app, db = _app(tmp_path / "token", DEPENDENCY_PROXY_METRICS_TOKEN="scrape-token", **labelled)
    DependencyProxy(app, db=db, host=PlatformHost())
    assert state(app).config.metrics_group_labels
    # Without metrics the labels say nothing to anyone.
    app, db = _app(tmp_path / "off", DEPENDENCY_PROXY_METRICS_GROUP_LABELS=True)
    DependencyProxy(app, db=db, host=PlatformHost())


def test_wiring_mistakes_say_how_to_fix_them(tmp_path: Path) -> None:
    app, db = _app(tmp_path)
    proxy = DependencyProxy(app, db=db, host=PlatformHost())
    with pytest.raises(RuntimeError, match="already been registered"):
        proxy.init_app(app)
    with pytest.raises(RuntimeError, match="host adapter"):
        DependencyProxy(Flask("other"), db=db)
    with pytest.raises(TypeError, match="HostAdapter"):
        DependencyProxy(_app(tmp_path / "x")[0], db=db, host=object())  # type: ignore[arg-type]
    bare = Flask("bare")
    bare.config["SECRET_KEY"] = "k"
    with pytest.raises(RuntimeError, match="Flask-SQLAlchemy"):
        DependencyProxy(bare, db=db, host=PlatformHost())


def test_cached_blobs_can_be_handed_to_nginx(
    tmp_path: Path, upstream: Registry, fresh_database_url: str
) -> None:
    pushed = images.push(
        images.build_image("accel-seed", layer_sizes=(10_000,)),
        upstream,
        "library/accel",
        "latest",
        workdir=tmp_path,
    )
    app = make_app(
        tmp_path,
        fresh_database_url,
        DEPENDENCY_PROXY_UPSTREAM_URL=upstream.url,
        DEPENDENCY_PROXY_X_ACCEL_REDIRECT_PREFIX="/_blobs/",
    )
    with app.app_context():
        world = build_world()
    assert (
        app.test_cli_runner().invoke(args=["dependency-proxy", "enable", "org/team"]).exit_code == 0
    )
    client = app.test_client()
    token = client.get(
        "/jwt/auth?service=dependency_proxy", auth=("dev", world.passwords["dev"])
    ).get_json()["token"]
    url = f"/v2/org/team/dependency_proxy/containers/accel/blobs/{pushed.layer_digests[0]}"
    headers = {"Authorization": f"Bearer {token}"}

    miss = client.get(url, headers=headers)  # a miss streams the bytes itself
    assert miss.status_code == 200 and len(miss.data) > 10_000
    # The client had every byte once they were verified; the commit follows.
    fetcher = state(app).cache.fetcher
    deadline = time.monotonic() + 10
    while fetcher.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    hit = client.get(url, headers=headers)
    assert hit.status_code == 200
    assert hit.data == b""
    location = hit.headers["X-Accel-Redirect"]
    assert location.startswith("/_blobs/sha256/")
    served = Path(state(app).store.blobs_root) / location.removeprefix("/_blobs/")
    assert served.read_bytes() == miss.data
    dispose(app)


def _readme_app_factory() -> t.Callable[[], Flask]:
    """``create_app`` of the README's "Installing it into your own Flask app", with the
    example platform's host adapter in place of ``myplatform``'s."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Installing it into your own Flask app", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace(
        "from myplatform.registry_host import PlatformHost",
        "from examples.platform.host import PlatformHost",
    )
    namespace: dict[str, t.Any] = {"__name__": "readme_app"}
    exec(compile(code, "README.md", "exec"), namespace)
    return t.cast(t.Callable[[], Flask], namespace["create_app"])


def test_the_readme_snippet_reads_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FLASK_SECRET_KEY", "from-the-environment")
    monkeypatch.setenv("FLASK_SQLALCHEMY_DATABASE_URI", f"sqlite:///{tmp_path}/db.sqlite")
    monkeypatch.setenv("DEPENDENCY_PROXY_UPSTREAM_URL", "https://mirror.example.com")
    monkeypatch.setenv("DEPENDENCY_PROXY_STORAGE_PATH", str(tmp_path / "store"))
    monkeypatch.setenv("DEPENDENCY_PROXY_TAG_CHECK_INTERVAL", "30")
    caplog.set_level("INFO", logger="flask_dependency_proxy")

    app = _readme_app_factory()()

    config = state(app).config
    assert config.upstream_url == "https://mirror.example.com"
    assert config.tag_check_interval == 30
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    assert "upstreams default (https://mirror.example.com)" in caplog.text
    assert str(tmp_path / "store") in caplog.text


def test_settings_left_in_the_environment_are_named_in_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DEPENDENCY_PROXY_UPSTREAM_URL", "https://mirror.example.com")
    monkeypatch.setenv("DEPENDENCY_PROXY_TOKEN_TTL", "60")
    app, db = _app(tmp_path, DEPENDENCY_PROXY_TOKEN_TTL=120)

    DependencyProxy(app, db=db, host=PlatformHost())

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    # The one the config lacks, not the one it sets itself.
    assert "DEPENDENCY_PROXY_UPSTREAM_URL" in warnings[0]
    assert "DEPENDENCY_PROXY_TOKEN_TTL" not in warnings[0]
    assert "from_prefixed_env" in warnings[0]
    assert state(app).config.upstream_url == "https://registry-1.docker.io"


def test_a_secret_key_only_in_the_environment_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_KEY", "unread")
    app, db = _app(tmp_path)
    app.config["SECRET_KEY"] = None
    with pytest.raises(RuntimeError, match="reads FLASK_SECRET_KEY"):
        DependencyProxy(app, db=db, host=PlatformHost())
