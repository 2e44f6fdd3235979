"""Alembic's entry point for the extension's revisions (run by :mod:`.` with a connection).

Every command runs on the connection that :mod:`flask_dependency_proxy.migrations` puts in
``config.attributes``, inside its transaction; nothing here reads an ``alembic.ini`` or
opens a connection of its own.
"""

from __future__ import annotations

from alembic import context

from flask_dependency_proxy.migrations import VERSION_TABLE, is_proxy_table
from flask_dependency_proxy.models.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "Run the dependency proxy's migrations with `flask dependency-proxy db upgrade`"
        " or flask_dependency_proxy.migrations.upgrade(), not with the alembic command."
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    include_name=is_proxy_table,
    # SQLite alters most columns by copying the table; batch mode does that for it.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
