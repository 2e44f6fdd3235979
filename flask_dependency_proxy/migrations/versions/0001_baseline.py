"""The tables as ``init-db`` created them before migrations existed.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: Row ids: 64-bit on PostgreSQL; SQLite's rowid alias must be spelled INTEGER.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dependency_proxy_group_settings",
        sa.Column("group_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("cleanup_enabled", sa.Boolean(), nullable=False),
        sa.Column("cleanup_days", sa.Integer(), nullable=False),
        sa.Column("purged_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("group_id", name="pk_dependency_proxy_group_settings"),
    )
    op.create_table(
        "dependency_proxy_manifests",
        sa.Column("id", _ID, primary_key=True, nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("tag", sa.String(128), nullable=True),
        sa.Column("digest", sa.String(135), nullable=False),
        sa.Column("media_type", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("checked_at", sa.DateTime(), nullable=False),
        sa.Column("last_read_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dependency_proxy_manifests"),
        sa.UniqueConstraint("group_id", "image", "tag", name="uq_dependency_proxy_manifests_tag"),
    )
    op.create_index(
        "ix_dependency_proxy_manifests_group_id", "dependency_proxy_manifests", ["group_id"]
    )
    op.create_index(
        "ix_dependency_proxy_manifests_digest",
        "dependency_proxy_manifests",
        ["group_id", "image", "digest"],
    )
    op.create_index(
        "ix_dependency_proxy_manifests_group_list",
        "dependency_proxy_manifests",
        ["group_id", "id"],
    )
    op.create_index(
        "ix_dependency_proxy_manifests_status", "dependency_proxy_manifests", ["status", "id"]
    )
    op.create_table(
        "dependency_proxy_blobs",
        sa.Column("id", _ID, primary_key=True, nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(135), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_read_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dependency_proxy_blobs"),
        sa.UniqueConstraint("group_id", "digest", name="uq_dependency_proxy_blobs_digest"),
    )
    op.create_index("ix_dependency_proxy_blobs_file", "dependency_proxy_blobs", ["digest"])
    op.create_index(
        "ix_dependency_proxy_blobs_group_list", "dependency_proxy_blobs", ["group_id", "id"]
    )
    op.create_index("ix_dependency_proxy_blobs_status", "dependency_proxy_blobs", ["status", "id"])
    op.create_table(
        "dependency_proxy_login_failures",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_dependency_proxy_login_failures"),
    )
    op.create_table(
        "dependency_proxy_leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_dependency_proxy_leases"),
    )


def downgrade() -> None:
    for table in (
        "dependency_proxy_leases",
        "dependency_proxy_login_failures",
        "dependency_proxy_blobs",
        "dependency_proxy_manifests",
        "dependency_proxy_group_settings",
    ):
        op.drop_table(table)
