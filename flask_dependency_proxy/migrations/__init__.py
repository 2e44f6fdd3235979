"""Alembic migrations of the extension's tables, apart from the host's own.

The revisions in ``versions/`` record themselves in their own version table,
:data:`VERSION_TABLE`, so a host's Alembic or Flask-Migrate history never meets them.
Alembic is configured here, in code: adopters need no ``alembic.ini``. Every function runs
on the engine it is given (the host's engine, which holds the extension's
tables), in one transaction; nothing here looks up an application.

From a deploy step, inside an app context::

    from flask_dependency_proxy import migrations
    migrations.upgrade(engine=db.engine)
"""

from __future__ import annotations

import dataclasses
import os
import typing as t

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.runtime.environment import NameFilterParentNames, NameFilterType

from ..models.tables import TABLE_PREFIX, metadata

#: Where the extension's revisions record the database's revision.
VERSION_TABLE = f"{TABLE_PREFIX}alembic_version"
#: The schema that ``init-db`` created before migrations existed.
BASELINE = "0001"
#: The revision that adds ``dependency_proxy_group_settings.size_limit_bytes``, which
#: operators of the baseline schema were told to add by hand.
GROUP_SIZE_LIMIT = "0002"
#: The tables of the baseline schema.
BASELINE_TABLES = frozenset(
    f"{TABLE_PREFIX}{name}"
    for name in ("group_settings", "manifests", "blobs", "login_failures", "leases")
)

#: The PostgreSQL advisory lock (a transaction's) that runs one migration command at a
#: time, whichever host starts it: every host of a fleet may run ``init-db`` as it starts.
MIGRATION_LOCK_KEY = 0x6470_6D69_6772  # "dpmigr"

_SCRIPT_LOCATION = os.path.dirname(os.path.abspath(__file__))


class MigrationError(Exception):
    """The database cannot be migrated as it is; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade` did.

    :param before: the revision the database was at (``None``: none recorded).
    :param after: the revision it is at now.
    :param adopted: the revision recorded for tables made before migrations existed, when
        :func:`upgrade` found such tables (see :func:`upgrade`).
    """

    before: str | None
    after: str | None
    adopted: str | None = None


def is_proxy_table(
    name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
) -> bool:
    """Alembic ``include_name`` hook: only the extension's tables (its version table too)."""
    return type_ != "table" or bool(name and name.startswith(TABLE_PREFIX))


def exclude_proxy_tables(
    name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
) -> bool:
    """Alembic ``include_name`` hook for the host's own migrations: everything but the
    extension's tables, so the host's autogenerate never proposes to drop them.

    With Flask-Migrate: ``Migrate(app, db, include_name=exclude_proxy_tables)``.
    """
    return type_ != "table" or not (name and name.startswith(TABLE_PREFIX))


def upgrade(revision: str = "head", *, engine: sa.Engine) -> Upgrade:
    """Bring the extension's tables to ``revision`` (the newest by default).

    Safe to repeat. An empty database gets every table. Tables made by ``init-db`` before
    migrations existed (every baseline table present, no version table) are adopted first:
    recorded at :data:`GROUP_SIZE_LIMIT` when they already have the size limit column
    (added by hand), else at :data:`BASELINE`, and then upgraded.

    :raises MigrationError: some of the extension's tables exist, but not all of the
        baseline's, and no revision is recorded.
    """
    with engine.begin() as connection:
        _one_at_a_time(connection)
        config = _config(connection)
        adopted = _adopt_unversioned(connection, config)
        before = _current(connection)
        command.upgrade(config, revision)
        return Upgrade(before=before, after=_current(connection), adopted=adopted)


def downgrade(revision: str, *, engine: sa.Engine) -> str | None:
    """Take the extension's tables back to ``revision``; ``"base"`` drops them all.

    :returns: the revision the database is at now.
    """
    with engine.begin() as connection:
        _one_at_a_time(connection)
        command.downgrade(_config(connection), revision)
        return _current(connection)


def stamp(revision: str, *, engine: sa.Engine) -> str | None:
    """Record ``revision`` as the database's without running anything (for tables that
    are known to be at that revision already).

    :returns: the revision recorded.
    """
    with engine.begin() as connection:
        _one_at_a_time(connection)
        command.stamp(_config(connection), revision)
        return _current(connection)


def current(*, engine: sa.Engine) -> str | None:
    """The revision the database records, ``None`` when it records none."""
    with engine.connect() as connection:
        return _current(connection)


def head() -> str:
    """The newest revision shipped with the package."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory(_SCRIPT_LOCATION).get_heads()
    if len(heads) != 1:
        raise MigrationError(f"Expected one head revision, found {heads!r}.")
    return heads[0]


def has_unversioned_tables(*, engine: sa.Engine) -> bool:
    """Whether the extension's tables exist with no revision recorded (made by an
    ``init-db`` older than migrations)."""
    with engine.connect() as connection:
        names = set(sa.inspect(connection).get_table_names())
    return VERSION_TABLE not in names and bool(names & BASELINE_TABLES)


def differences(*, engine: sa.Engine) -> list[t.Any]:
    """How the extension's tables in the database differ from its models (Alembic's
    autogenerate diffs; empty when they match)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"version_table": VERSION_TABLE, "include_name": is_proxy_table},
        )
        return list(compare_metadata(context, metadata))


# -- helpers ---------------------------------------------------------------------------------


def _one_at_a_time(connection: sa.Connection) -> None:
    """Wait for any other migration command on this PostgreSQL database; the lock ends
    with the transaction. SQLite deployments have one host, which runs one at a time."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )


def _config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", _SCRIPT_LOCATION)
    # Read by env.py: migrations run on this connection, inside its transaction.
    config.attributes["connection"] = connection
    return config


def _current(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()


def _adopt_unversioned(connection: sa.Connection, config: Config) -> str | None:
    inspector = sa.inspect(connection)
    names = set(inspector.get_table_names())
    if VERSION_TABLE in names or not names & BASELINE_TABLES:
        return None
    missing = sorted(BASELINE_TABLES - names)
    if missing:
        raise MigrationError(
            "The database has some of the dependency proxy's tables but not "
            f"{', '.join(missing)}, and records no migration revision: it matches no"
            " known schema. Restore the missing tables, or drop the dependency_proxy_*"
            " tables (the cache is then empty), and run `db upgrade` again."
        )
    columns = {column["name"] for column in inspector.get_columns(f"{TABLE_PREFIX}group_settings")}
    adopted = GROUP_SIZE_LIMIT if "size_limit_bytes" in columns else BASELINE
    command.stamp(config, adopted)
    return adopted
