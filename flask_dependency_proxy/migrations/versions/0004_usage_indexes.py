"""Indexes a group's usage is summed from (``group_id, status, size``), so checking a
size limit reads neither the manifests' content nor the blob rows themselves.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_INDEXES = {
    "ix_dependency_proxy_manifests_usage": "dependency_proxy_manifests",
    "ix_dependency_proxy_blobs_usage": "dependency_proxy_blobs",
}


def upgrade() -> None:
    for name, table in _INDEXES.items():
        op.create_index(name, table, ["group_id", "status", "size"])


def downgrade() -> None:
    for name, table in _INDEXES.items():
        op.drop_index(name, table_name=table)
