"""What the cache saves: pulls and bytes per group and UTC day.

``dependency_proxy_usage_days`` holds one row per group and day with the pulls served
from the cache and fetched upstream, and the blob bytes of each.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dependency_proxy_usage_days",
        sa.Column("group_id", sa.BigInteger, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("pulls_cached", sa.BigInteger, nullable=False),
        sa.Column("pulls_upstream", sa.BigInteger, nullable=False),
        sa.Column("bytes_cached", sa.BigInteger, nullable=False),
        sa.Column("bytes_upstream", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("group_id", "day", name="pk_dependency_proxy_usage_days"),
    )


def downgrade() -> None:
    op.drop_table("dependency_proxy_usage_days")
