"""Supply-chain controls: blocked images, the record of who pulled what, group events.

``dependency_proxy_blocked_images`` holds blocks by manifest digest or by image name and
tag pattern, for one group or (``group_id`` ``NULL``) every group; a lifted block keeps
its row with ``removed_at``. ``dependency_proxy_pulls`` records every manifest pull;
``dependency_proxy_group_events`` what the controls did in a group.
``dependency_proxy_group_settings.upstream_not_found`` is the group's policy for a cached
tag upstream answers 404 for (``NULL``: the instance's default).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _id() -> sa.Column[int]:
    return sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "dependency_proxy_blocked_images",
        _id(),
        sa.Column("group_id", sa.BigInteger, nullable=True),
        sa.Column("digest", sa.String(135), nullable=True),
        sa.Column("image", sa.String(255), nullable=True),
        sa.Column("tag_pattern", sa.String(128), nullable=True),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("removed_at", sa.DateTime, nullable=True),
        sa.Column("removed_by", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dependency_proxy_blocked_images"),
    )
    op.create_index(
        "ix_dependency_proxy_blocked_images_active",
        "dependency_proxy_blocked_images",
        ["removed_at", "id"],
    )
    op.create_table(
        "dependency_proxy_pulls",
        _id(),
        sa.Column("pulled_at", sa.DateTime, nullable=False),
        sa.Column("group_id", sa.BigInteger, nullable=False),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("reference", sa.String(135), nullable=False),
        sa.Column("digest", sa.String(135), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("principal_kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("project", sa.String(255), nullable=True),
        sa.Column("context", sa.Text, nullable=True),
        sa.Column("client_address", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dependency_proxy_pulls"),
    )
    op.create_index(
        "ix_dependency_proxy_pulls_group", "dependency_proxy_pulls", ["group_id", "pulled_at"]
    )
    op.create_index(
        "ix_dependency_proxy_pulls_digest", "dependency_proxy_pulls", ["digest", "pulled_at"]
    )
    op.create_index("ix_dependency_proxy_pulls_time", "dependency_proxy_pulls", ["pulled_at"])
    op.create_table(
        "dependency_proxy_group_events",
        _id(),
        sa.Column("group_id", sa.BigInteger, nullable=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("image", sa.String(255), nullable=True),
        sa.Column("reference", sa.String(135), nullable=True),
        sa.Column("message", sa.String(1000), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dependency_proxy_group_events"),
    )
    op.create_index(
        "ix_dependency_proxy_group_events_group",
        "dependency_proxy_group_events",
        ["group_id", "id"],
    )
    with op.batch_alter_table("dependency_proxy_group_settings") as batch:
        batch.add_column(sa.Column("upstream_not_found", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dependency_proxy_group_settings") as batch:
        batch.drop_column("upstream_not_found")
    op.drop_table("dependency_proxy_group_events")
    op.drop_table("dependency_proxy_pulls")
    op.drop_table("dependency_proxy_blocked_images")
