"""Tag cooldown: ``dependency_proxy_tag_cooldowns`` holds the tags whose new upstream
digest waits before it is served, and ``dependency_proxy_group_settings`` the group's
cooldown (seconds, the policy for brand-new tags and for pulls by digest, the exempt
image patterns; ``NULL``: the instance's default).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dependency_proxy_tag_cooldowns",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            nullable=False,
        ),
        sa.Column("group_id", sa.BigInteger, nullable=False),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("tag", sa.String(128), nullable=False),
        sa.Column("previous_digest", sa.String(135), nullable=True),
        sa.Column("pending_digest", sa.String(135), nullable=False),
        sa.Column("first_seen_at", sa.DateTime, nullable=False),
        sa.Column("released_at", sa.DateTime, nullable=True),
        sa.Column("released_by", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dependency_proxy_tag_cooldowns"),
        sa.UniqueConstraint(
            "group_id", "image", "tag", name="uq_dependency_proxy_tag_cooldowns_tag"
        ),
    )
    op.create_index(
        "ix_dependency_proxy_tag_cooldowns_digest",
        "dependency_proxy_tag_cooldowns",
        ["group_id", "pending_digest"],
    )
    with op.batch_alter_table("dependency_proxy_group_settings") as batch:
        batch.add_column(sa.Column("cooldown_seconds", sa.Integer, nullable=True))
        batch.add_column(sa.Column("cooldown_new_tags", sa.String(16), nullable=True))
        batch.add_column(sa.Column("cooldown_digest_pulls", sa.String(16), nullable=True))
        batch.add_column(sa.Column("cooldown_exempt", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dependency_proxy_group_settings") as batch:
        for column in (
            "cooldown_exempt",
            "cooldown_digest_pulls",
            "cooldown_new_tags",
            "cooldown_seconds",
        ):
            batch.drop_column(column)
    op.drop_table("dependency_proxy_tag_cooldowns")
