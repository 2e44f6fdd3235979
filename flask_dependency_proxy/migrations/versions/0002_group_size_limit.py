"""Per-group size limits: ``dependency_proxy_group_settings.size_limit_bytes``.

``NULL`` is no limit, which is what every existing group had.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dependency_proxy_group_settings") as batch:
        batch.add_column(sa.Column("size_limit_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dependency_proxy_group_settings") as batch:
        batch.drop_column("size_limit_bytes")
