"""Predictive refresh: ``dependency_proxy_tag_pulls`` counts a group's pulls per image,
manifest reference and day, ``dependency_proxy_tag_refreshes`` holds what the refresher
last did per hot tag, and ``dependency_proxy_group_settings`` the group's refresh
settings (``NULL``: the instance's default).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dependency_proxy_tag_pulls",
        sa.Column("group_id", sa.BigInteger, nullable=False),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("reference", sa.String(135), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("pulls", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "group_id", "image", "reference", "day", name="pk_dependency_proxy_tag_pulls"
        ),
    )
    op.create_table(
        "dependency_proxy_tag_refreshes",
        sa.Column("group_id", sa.BigInteger, nullable=False),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("tag", sa.String(128), nullable=False),
        sa.Column("checked_at", sa.DateTime, nullable=True),
        sa.Column("refreshed_at", sa.DateTime, nullable=True),
        sa.Column("refreshed_digest", sa.String(135), nullable=True),
        sa.Column("prefetched_bytes", sa.BigInteger, nullable=False),
        sa.Column("platforms", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint(
            "group_id", "image", "tag", name="pk_dependency_proxy_tag_refreshes"
        ),
    )
    with op.batch_alter_table("dependency_proxy_group_settings") as batch:
        batch.add_column(sa.Column("refresh_enabled", sa.Boolean, nullable=True))
        batch.add_column(sa.Column("refresh_tags", sa.Integer, nullable=True))
        batch.add_column(sa.Column("refresh_interval_seconds", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dependency_proxy_group_settings") as batch:
        for column in ("refresh_interval_seconds", "refresh_tags", "refresh_enabled"):
            batch.drop_column(column)
    op.drop_table("dependency_proxy_tag_refreshes")
    op.drop_table("dependency_proxy_tag_pulls")
