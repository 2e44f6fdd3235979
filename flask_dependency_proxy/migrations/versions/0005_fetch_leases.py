"""Fetch leases: which host fetches a blob from upstream, for the hosts that share the
database (one upstream fetch per blob across the fleet).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dependency_proxy_fetch_leases",
        sa.Column("digest", sa.String(140), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("peer_url", sa.String(500), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dependency_proxy_fetch_leases")
