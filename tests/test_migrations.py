"""Schema migrations of the extension's tables, on SQLite and PostgreSQL.

An "old" database is built the way ``init-db`` built it before migrations existed: the
exact ``CREATE`` statements its ``create_all`` ran (the tables as the baseline revision
describes them), filled with rows in every table, with no version table. Commands run
through the example platform's CLI, as an operator runs them.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from flask.testing import FlaskCliRunner

from examples.platform import create_app
from examples.platform.models import db
from flask_dependency_proxy.migrations import VERSION_TABLE, exclude_proxy_tables
from flask_dependency_proxy.models.tables import metadata
from tests.platform_fixtures import dispose, platform_env_keys
from tests.support.postgres import PostgresCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAD = "0013"
SETTINGS = "dependency_proxy_group_settings"
MANIFEST_DIGEST = "sha256:" + "a" * 64
BLOB_DIGEST = "sha256:" + "b" * 64
MANIFEST_BYTES = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
PURGED_AT = dt.datetime(2026, 11, 30, 12, 0, 0)

#: What ``init-db`` ran before migrations existed (``create_all`` of the baseline tables).
_OLD_TABLES = {
    "dependency_proxy_group_settings": """
        group_id BIGINT NOT NULL, enabled BOOLEAN NOT NULL, cleanup_enabled BOOLEAN NOT NULL,
        cleanup_days INTEGER NOT NULL, purged_at {ts}, updated_at {ts} NOT NULL,
        CONSTRAINT pk_dependency_proxy_group_settings PRIMARY KEY (group_id)""",
    "dependency_proxy_manifests": """
        id {id} NOT NULL, group_id BIGINT NOT NULL, image VARCHAR(255) NOT NULL,
        tag VARCHAR(128), digest VARCHAR(135) NOT NULL, media_type VARCHAR(255) NOT NULL,
        size BIGINT NOT NULL, content {blob} NOT NULL, status SMALLINT NOT NULL,
        created_at {ts} NOT NULL, updated_at {ts} NOT NULL, checked_at {ts} NOT NULL,
        last_read_at {ts} NOT NULL,
        CONSTRAINT pk_dependency_proxy_manifests PRIMARY KEY (id),
        CONSTRAINT uq_dependency_proxy_manifests_tag UNIQUE (group_id, image, tag)""",
    "dependency_proxy_blobs": """
        id {id} NOT NULL, group_id BIGINT NOT NULL, digest VARCHAR(135) NOT NULL,
        size BIGINT NOT NULL, status SMALLINT NOT NULL, created_at {ts} NOT NULL,
        last_read_at {ts} NOT NULL,
        CONSTRAINT pk_dependency_proxy_blobs PRIMARY KEY (id),
        CONSTRAINT uq_dependency_proxy_blobs_digest UNIQUE (group_id, digest)""",
    "dependency_proxy_login_failures": """
        "key" VARCHAR(64) NOT NULL, failures INTEGER NOT NULL,
        window_started_at {ts} NOT NULL,
        CONSTRAINT pk_dependency_proxy_login_failures PRIMARY KEY ("key")""",
    "dependency_proxy_leases": """
        name VARCHAR(64) NOT NULL, holder VARCHAR(255) NOT NULL, expires_at {ts} NOT NULL,
        finished_at {ts},
        CONSTRAINT pk_dependency_proxy_leases PRIMARY KEY (name)""",
}
_OLD_INDEXES = [
    "ix_dependency_proxy_blobs_file ON dependency_proxy_blobs (digest)",
    "ix_dependency_proxy_blobs_status ON dependency_proxy_blobs (status, id)",
    "ix_dependency_proxy_blobs_group_list ON dependency_proxy_blobs (group_id, id)",
    "ix_dependency_proxy_manifests_group_id ON dependency_proxy_manifests (group_id)",
    "ix_dependency_proxy_manifests_status ON dependency_proxy_manifests (status, id)",
    "ix_dependency_proxy_manifests_group_list ON dependency_proxy_manifests (group_id, id)",
    "ix_dependency_proxy_manifests_digest ON dependency_proxy_manifests (group_id, image, digest)",
]
_TYPES = {
    "sqlite": {"id": "INTEGER", "ts": "DATETIME", "blob": "BLOB"},
    "postgresql": {"id": "BIGSERIAL", "ts": "TIMESTAMP WITHOUT TIME ZONE", "blob": "BYTEA"},
}


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def make_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> t.Iterator[t.Callable[[str], Flask]]:
    """The example platform on a given database, its tables left as they are."""
    for key in platform_env_keys():
        monkeypatch.delenv(key)
    made: list[Flask] = []

    def make(database_url: str) -> Flask:
        app = create_app(
            {
                "TESTING": True,
                "SECRET_KEY": "test-secret",
                "SQLALCHEMY_DATABASE_URI": database_url,
                "DEPENDENCY_PROXY_UPSTREAM_URL": "http://127.0.0.1:9",
                "DEPENDENCY_PROXY_STORAGE_PATH": str(tmp_path / f"store-{len(made)}"),
                "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
            }
        )
        made.append(app)
        return app

    yield make
    for app in made:
        dispose(app)


@pytest.fixture
def old_platform(
    make_platform: t.Callable[[str], Flask], fresh_database_url: str, database_backend: str
) -> Flask:
    """A platform whose database the old ``init-db`` made, with a group ``org`` (id 1, its
    owner ``olive`` with an API token) and rows in every table of the extension."""
    app = make_platform(fresh_database_url)
    with app.app_context():
        db.create_all()  # the host's own tables, which migrations never touch
        with db.engine.begin() as connection:
            for table, columns in _OLD_TABLES.items():
                body = columns.format(**_TYPES[database_backend])
                connection.execute(sa.text(f"CREATE TABLE {table} ({body})"))
            for index in _OLD_INDEXES:
                connection.execute(sa.text(f"CREATE INDEX {index}"))
    runner = app.test_cli_runner()
    ok(runner, "user", "create", "olive", "--password", "olive-pw")
    ok(runner, "group", "create", "org")
    ok(runner, "group", "add-member", "org", "olive", "--role", "owner")
    app.config["olive token"] = last_line(ok(runner, "token", "create", "olive", "--scopes", "api"))
    now = dt.datetime(2026, 12, 1, 8, 30, 0)
    rows = [
        f"INSERT INTO {SETTINGS} (group_id, enabled, cleanup_enabled, cleanup_days,"
        " purged_at, updated_at) VALUES (1, :yes, :yes, 30, NULL, :now),"
        " (2, :no, :no, 90, :purged, :now)",
        "INSERT INTO dependency_proxy_manifests (group_id, image, tag, digest, media_type,"
        " size, content, status, created_at, updated_at, checked_at, last_read_at)"
        " VALUES (1, 'library/alpine', '3.19', :manifest, 'application/vnd.oci.image."
        "manifest.v1+json', :manifest_size, :content, 0, :now, :now, :now, :now)",
        "INSERT INTO dependency_proxy_blobs (group_id, digest, size, status, created_at,"
        " last_read_at) VALUES (1, :blob, 1234, 0, :now, :now), (2, :blob, 1234, 1, :now, :now)",
        'INSERT INTO dependency_proxy_login_failures ("key", failures, window_started_at)'
        " VALUES (:failure_key, 3, :now)",
        "INSERT INTO dependency_proxy_leases (name, holder, expires_at, finished_at)"
        " VALUES ('cleanup', 'host-a:123', :now, :now)",
    ]
    values = {
        "yes": True,
        "no": False,
        "now": now,
        "purged": PURGED_AT,
        "manifest": MANIFEST_DIGEST,
        "manifest_size": len(MANIFEST_BYTES),
        "content": MANIFEST_BYTES,
        "blob": BLOB_DIGEST,
        "failure_key": "f" * 64,
    }
    with app.app_context(), db.engine.begin() as connection:
        for statement in rows:
            connection.execute(sa.text(statement), values)
    return app


# -- helpers -------------------------------------------------------------------------------------


def ok(runner: FlaskCliRunner, *args: str) -> str:
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def fails(runner: FlaskCliRunner, *args: str) -> str:
    result = runner.invoke(args=list(args))
    assert result.exit_code == 1, (args, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.output


def last_line(output: str) -> str:
    return output.rstrip("\n").rsplit("\n", 1)[-1]


def proxy_cli(app: Flask, *args: str) -> str:
    return ok(app.test_cli_runner(), "dependency-proxy", *args)


def schema_differences(app: Flask) -> list[t.Any]:
    """Alembic's comparison of the extension's tables in the database with its models."""
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "version_table": VERSION_TABLE,
                "include_name": lambda name, type_, parents: (
                    type_ != "table" or name.startswith("dependency_proxy_")
                ),
            },
        )
        return list(compare_metadata(context, metadata))


def rows(app: Flask, table: str, *names: str) -> list[tuple[t.Any, ...]]:
    """The table's rows (these columns, sorted), read through its reflected column types."""
    with app.app_context(), db.engine.connect() as connection:
        reflected = sa.Table(table, sa.MetaData(), autoload_with=connection)
        selected = [reflected.c[name] for name in names]
        return [tuple(row) for row in connection.execute(sa.select(*selected).order_by(*selected))]


def columns(app: Flask, table: str) -> set[str]:
    with app.app_context():
        return {column["name"] for column in sa.inspect(db.engine).get_columns(table)}


def assert_old_rows_kept(app: Flask) -> None:
    assert rows(
        app, SETTINGS, "group_id", "enabled", "cleanup_enabled", "cleanup_days", "purged_at"
    ) == [(1, True, True, 30, None), (2, False, False, 90, PURGED_AT)]
    assert rows(app, "dependency_proxy_manifests", "group_id", "image", "tag", "digest") == [
        (1, "library/alpine", "3.19", MANIFEST_DIGEST)
    ]
    assert rows(app, "dependency_proxy_manifests", "content") == [(MANIFEST_BYTES,)]
    assert rows(app, "dependency_proxy_blobs", "group_id", "digest", "size", "status") == [
        (1, BLOB_DIGEST, 1234, 0),
        (2, BLOB_DIGEST, 1234, 1),
    ]
    assert rows(app, "dependency_proxy_leases", "name", "holder") == [("cleanup", "host-a:123")]


def api(app: Flask, method: str, path: str, **kwargs: t.Any) -> t.Any:
    client = app.test_client()
    response = client.open(
        f"/api/v4/groups/1/dependency_proxy/{path}",
        method=method,
        headers={"PRIVATE-TOKEN": app.config["olive token"]},
        **kwargs,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


# -- upgrading a database made before migrations ---------------------------------------------


def test_db_upgrade_takes_over_an_old_database_and_keeps_its_rows(old_platform: Flask) -> None:
    assert "none: the tables were made before migrations existed" in proxy_cli(
        old_platform, "db", "current"
    )

    output = proxy_cli(old_platform, "db", "upgrade")

    assert "recorded them at revision 0001" in output
    assert f"upgraded from 0001 to revision {HEAD}" in output
    assert proxy_cli(old_platform, "db", "current").strip() == f"{HEAD} (head)"
    assert schema_differences(old_platform) == []
    assert_old_rows_kept(old_platform)
    # Counts under the old keys can never be read again: the upgrade forgets them.
    assert rows(old_platform, "dependency_proxy_login_failures", "key") == []
    assert "size_limit_bytes" in columns(old_platform, SETTINGS)
    # The current code reads the old rows and writes the new column.
    settings = api(old_platform, "GET", "settings")
    assert settings["enabled"] is True
    assert settings["cleanup_policy"]["days"] == 30
    assert [item["digest"] for item in api(old_platform, "GET", "manifests")] == [MANIFEST_DIGEST]
    updated = api(old_platform, "PUT", "settings", json={"quota": {"limit_bytes": 5_000_000}})
    assert updated["quota"]["limit_bytes"] == 5_000_000
    assert rows(old_platform, SETTINGS, "group_id", "size_limit_bytes") == [
        (1, 5_000_000),
        (2, None),
    ]
    assert "nothing to do" in proxy_cli(old_platform, "db", "upgrade")


def test_platform_init_db_upgrades_an_old_database(old_platform: Flask) -> None:
    ok(old_platform.test_cli_runner(), "init-db")

    assert proxy_cli(old_platform, "db", "current").strip() == f"{HEAD} (head)"
    assert schema_differences(old_platform) == []
    assert_old_rows_kept(old_platform)


def test_an_old_database_with_the_hand_added_column_is_taken_over_at_0002(
    old_platform: Flask,
) -> None:
    # What the README told operators of the old schema to run.
    with old_platform.app_context(), db.engine.begin() as connection:
        connection.execute(sa.text(f"ALTER TABLE {SETTINGS} ADD COLUMN size_limit_bytes BIGINT"))
        connection.execute(
            sa.text(f"UPDATE {SETTINGS} SET size_limit_bytes = 777 WHERE group_id = 2")
        )

    output = proxy_cli(old_platform, "init-db")

    assert "recorded them at revision 0002" in output
    assert proxy_cli(old_platform, "db", "current").strip() == f"{HEAD} (head)"
    assert schema_differences(old_platform) == []
    assert_old_rows_kept(old_platform)
    assert rows(old_platform, SETTINGS, "group_id", "size_limit_bytes") == [
        (1, None),
        (2, 777),
    ]


def test_downgrade_to_the_baseline_drops_the_column_and_keeps_the_rows(
    old_platform: Flask,
) -> None:
    proxy_cli(old_platform, "db", "upgrade")
    api(old_platform, "PUT", "settings", json={"quota": {"limit_bytes": 4096}})

    assert "downgraded to revision 0001" in proxy_cli(old_platform, "db", "downgrade", "0001")

    assert proxy_cli(old_platform, "db", "current").strip() == "0001"
    assert "size_limit_bytes" not in columns(old_platform, SETTINGS)
    # What revisions 0002-0012 add: the size-limit column, the usage indexes, the
    # fetch leases, the fleet's upstream tokens, the group upstream lists, the
    # manifests' upstream column, the usage days, the group paths (and their index), and
    # the supply-chain controls (the blocked images, the pull record and the group events
    # with their five indexes, the deleted-tag policy column); 0011 the signature policies
    # and verdicts; 0012 the tag cooldown (its table and index, the four cooldown columns
    # of the group settings); 0013 predictive refresh (two tables, three columns).
    assert sorted(diff[0] for diff in schema_differences(old_platform)) == [
        *["add_column"] * 10,
        *["add_index"] * 9,
        *["add_table"] * 13,
    ]
    assert_old_rows_kept(old_platform)
    # Upgrading again brings the column back empty: no limit.
    proxy_cli(old_platform, "db", "upgrade")
    assert schema_differences(old_platform) == []
    assert rows(old_platform, SETTINGS, "size_limit_bytes") == [(None,), (None,)]


def test_group_upstreams_revision_keeps_manifests_on_the_default_upstream(
    old_platform: Flask,
) -> None:
    proxy_cli(old_platform, "db", "upgrade")

    # Manifests cached before upstreams were data came from the default upstream.
    assert rows(old_platform, "dependency_proxy_manifests", "tag", "upstream") == [("3.19", None)]
    now = dt.datetime(2026, 12, 2, 9, 0, 0)
    with old_platform.app_context(), db.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO dependency_proxy_group_upstreams (group_id, upstream, position,"
                " username_encrypted, password_encrypted, updated_at)"
                " VALUES (1, 'ghcr', 0, :secret, :secret, :now),"
                " (1, 'dockerhub', 1, NULL, NULL, :now)"
            ),
            {"secret": b"\x00\xffencrypted", "now": now},
        )
        with pytest.raises(sa.exc.IntegrityError):
            with connection.begin_nested():
                connection.execute(
                    sa.text(
                        "INSERT INTO dependency_proxy_group_upstreams (group_id, upstream,"
                        " position, updated_at) VALUES (1, 'ghcr', 2, :now)"
                    ),
                    {"now": now},
                )
    assert rows(
        old_platform,
        "dependency_proxy_group_upstreams",
        "position",
        "upstream",
        "password_encrypted",
    ) == [(0, "ghcr", b"\x00\xffencrypted"), (1, "dockerhub", None)]

    assert "downgraded to revision 0006" in proxy_cli(old_platform, "db", "downgrade", "0006")

    assert "upstream" not in columns(old_platform, "dependency_proxy_manifests")
    with old_platform.app_context():
        assert "dependency_proxy_group_upstreams" not in sa.inspect(db.engine).get_table_names()
    assert_old_rows_kept(old_platform)
    proxy_cli(old_platform, "db", "upgrade")
    assert schema_differences(old_platform) == []


def test_downgrade_to_base_drops_every_table_of_the_extension(old_platform: Flask) -> None:
    proxy_cli(old_platform, "db", "upgrade")

    proxy_cli(old_platform, "db", "downgrade", "base")

    with old_platform.app_context():
        names = set(sa.inspect(db.engine).get_table_names())
    assert {name for name in names if name.startswith("dependency_proxy_")} == {VERSION_TABLE}
    assert "users" in names  # the host's tables are the host's
    proxy_cli(old_platform, "db", "upgrade")
    assert schema_differences(old_platform) == []


# -- new databases ----------------------------------------------------------------------------


def test_platform_init_db_on_an_empty_database_ends_at_head(
    make_platform: t.Callable[[str], Flask], fresh_database_url: str
) -> None:
    app = make_platform(fresh_database_url)
    assert proxy_cli(app, "db", "current").strip() == "none"

    ok(app.test_cli_runner(), "init-db")

    assert proxy_cli(app, "db", "current").strip() == f"{HEAD} (head)"
    assert "match the models" in proxy_cli(app, "db", "check")
    assert "nothing to do" in proxy_cli(app, "init-db")


def test_db_upgrade_of_an_empty_database_builds_the_models_exactly(
    make_platform: t.Callable[[str], Flask], fresh_database_url: str
) -> None:
    app = make_platform(fresh_database_url)

    assert "from an empty database to revision" in proxy_cli(app, "db", "upgrade")

    assert schema_differences(app) == []
    with app.app_context():
        names = set(sa.inspect(db.engine).get_table_names())
    assert names == {*metadata.tables, VERSION_TABLE}


def test_upgrade_and_downgrade_to_a_named_revision(
    make_platform: t.Callable[[str], Flask], fresh_database_url: str
) -> None:
    app = make_platform(fresh_database_url)

    proxy_cli(app, "db", "upgrade", "0001")

    assert proxy_cli(app, "db", "current").strip() == "0001"
    assert "size_limit_bytes" not in columns(app, SETTINGS)
    assert "differs: ('add_column'" in fails(
        app.test_cli_runner(), "dependency-proxy", "db", "check"
    )
    proxy_cli(app, "db", "upgrade")
    proxy_cli(app, "db", "downgrade", "0002")
    assert proxy_cli(app, "db", "current").strip() == "0002"


def test_stamp_records_a_revision_without_touching_tables(
    make_platform: t.Callable[[str], Flask], fresh_database_url: str
) -> None:
    app = make_platform(fresh_database_url)
    proxy_cli(app, "db", "upgrade", "0001")

    assert "recorded at revision 0002" in proxy_cli(app, "db", "stamp", "0002")

    assert proxy_cli(app, "db", "current").strip() == "0002"
    assert "size_limit_bytes" not in columns(app, SETTINGS)


# -- refusals ---------------------------------------------------------------------------------


def test_some_but_not_all_old_tables_are_refused_with_what_to_do(
    make_platform: t.Callable[[str], Flask], fresh_database_url: str, database_backend: str
) -> None:
    app = make_platform(fresh_database_url)
    body = _OLD_TABLES[SETTINGS].format(**_TYPES[database_backend])
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE {SETTINGS} ({body})"))

    output = fails(app.test_cli_runner(), "dependency-proxy", "db", "upgrade")

    assert "but not dependency_proxy_blobs, dependency_proxy_leases" in output
    assert "drop the dependency_proxy_* tables" in output
    assert proxy_cli(app, "db", "current").strip().startswith("none")
    with app.app_context():
        assert VERSION_TABLE not in sa.inspect(db.engine).get_table_names()


@pytest.mark.parametrize(
    "args",
    [
        ("db", "upgrade", "0999"),
        ("db", "downgrade", "nope"),
        ("db", "stamp", "'; DROP TABLE users; --"),
    ],
)
def test_unknown_revisions_are_refused(
    make_platform: t.Callable[[str], Flask], fresh_database_url: str, args: tuple[str, ...]
) -> None:
    app = make_platform(fresh_database_url)
    ok(app.test_cli_runner(), "init-db")

    output = fails(app.test_cli_runner(), "dependency-proxy", *args)

    assert "Can't locate revision identified by" in output
    assert proxy_cli(app, "db", "current").strip() == f"{HEAD} (head)"


def test_downgrade_refuses_a_revision_above_the_current_one(
    make_platform: t.Callable[[str], Flask], fresh_database_url: str
) -> None:
    app = make_platform(fresh_database_url)
    proxy_cli(app, "db", "upgrade", "0001")

    output = fails(app.test_cli_runner(), "dependency-proxy", "db", "downgrade", HEAD)

    assert "Error:" in output
    assert proxy_cli(app, "db", "current").strip() == "0001"


# -- beside the host's own migrations --------------------------------------------------------


def test_the_hosts_autogenerate_leaves_the_proxy_tables_alone_with_exclude_proxy_tables(
    make_platform: t.Callable[[str], Flask], fresh_database_url: str
) -> None:
    app = make_platform(fresh_database_url)
    ok(app.test_cli_runner(), "init-db")

    def host_differences(**opts: t.Any) -> list[t.Any]:
        with app.app_context(), db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts=opts)
            return list(compare_metadata(context, db.metadata))

    dropped = {diff[1].name for diff in host_differences() if diff[0] == "remove_table"}
    assert dropped == {*metadata.tables, VERSION_TABLE}
    assert host_differences(include_name=exclude_proxy_tables) == []


# -- several hosts -------------------------------------------------------------------------------


def test_hosts_upgrading_one_postgresql_database_at_once_all_succeed(
    make_platform: t.Callable[[str], Flask], postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """Every host of a fleet may run ``init-db`` as it starts. Both upgrades are held at
    their first table (another transaction holds that name) until both wait; then they
    run one after the other, and the second finds nothing to do."""
    name = postgres_cluster.create_database("migrate")
    url = postgres_cluster.url(name)
    blocker = make_platform(url)
    try:
        env = {key: value for key, value in os.environ.items() if key not in platform_env_keys()}
        env.update(
            DATABASE_URL=url,
            SECRET_KEY="test-secret",
            DEPENDENCY_PROXY_STORAGE_PATH=str(tmp_path / "hosts-store"),
        )
        with blocker.app_context(), db.engine.connect() as connection:
            holding = connection.begin()
            connection.execute(sa.text(f"CREATE TABLE {VERSION_TABLE} (held INTEGER)"))
            hosts = [
                subprocess.Popen(
                    [sys.executable, "-m", "flask", "--app", "examples.platform"]
                    + ["dependency-proxy", "init-db"],
                    cwd=REPO_ROOT,
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
                for _host in range(2)
            ]
            try:
                _wait_for_waiting_sessions(db.engine, name, count=2, hosts=hosts)
            finally:
                holding.rollback()
            outputs = [host.communicate(timeout=60)[0] for host in hosts]
        assert [host.returncode for host in hosts] == [0, 0], outputs
        assert sum("nothing to do" in output for output in outputs) == 1, outputs
        assert proxy_cli(blocker, "db", "current").strip() == f"{HEAD} (head)"
        assert schema_differences(blocker) == []
    finally:
        dispose(blocker)
        postgres_cluster.drop_database(name)


def _wait_for_waiting_sessions(
    engine: sa.Engine, database: str, *, count: int, hosts: list[subprocess.Popen[str]]
) -> None:
    """Until ``count`` sessions on ``database`` wait for a lock (hosts still running)."""
    deadline = time.monotonic() + 30
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :database"
        " AND wait_event_type IN ('Lock', 'Advisory')"
    )
    with engine.connect() as watcher:
        while True:
            # A new transaction each time: the activity view is a snapshot per transaction.
            seen = watcher.execute(waiting, {"database": database}).scalar_one()
            watcher.rollback()
            if seen >= count:
                return
            finished = [host.args for host in hosts if host.poll() is not None]
            assert not finished, f"a host finished while the table was held: {finished}"
            assert time.monotonic() < deadline, "the hosts never waited for the held table"
            time.sleep(0.05)
