"""Signature policies per group, and the verdicts pulls found under them.

``dependency_proxy_signature_policies`` holds a group's mode and trusted signers;
``dependency_proxy_signature_verdicts`` one verdict per group, image, digest and policy
fingerprint.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dependency_proxy_signature_policies",
        sa.Column("group_id", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("group_id", name="pk_dependency_proxy_signature_policies"),
    )
    op.create_table(
        "dependency_proxy_signature_verdicts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
        sa.Column("group_id", sa.BigInteger, nullable=False),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("digest", sa.String(135), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("checked_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dependency_proxy_signature_verdicts"),
        sa.UniqueConstraint(
            "group_id",
            "image",
            "digest",
            "fingerprint",
            name="uq_dependency_proxy_signature_verdicts",
        ),
    )


def downgrade() -> None:
    op.drop_table("dependency_proxy_signature_verdicts")
    op.drop_table("dependency_proxy_signature_policies")
