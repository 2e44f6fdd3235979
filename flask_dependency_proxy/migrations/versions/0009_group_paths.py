"""The path each group id named when the extension first saw it.

``dependency_proxy_group_paths`` holds, per group id, the path the host's adapter gave
(case kept) and its lowercased form. A group whose id now names another path is
refused until the host confirms a rename or forgets the old group; existing groups get
their row the next time they are seen (a pull, a page, a settings change).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dependency_proxy_group_paths",
        sa.Column("group_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("path_lower", sa.String(1024), nullable=False),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("group_id", name="pk_dependency_proxy_group_paths"),
    )
    op.create_index(
        "ix_dependency_proxy_group_paths_path_lower",
        "dependency_proxy_group_paths",
        ["path_lower"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_dependency_proxy_group_paths_path_lower", table_name="dependency_proxy_group_paths"
    )
    op.drop_table("dependency_proxy_group_paths")
