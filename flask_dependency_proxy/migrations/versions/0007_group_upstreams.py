"""Per-group upstream lists and which upstream served a manifest.

``dependency_proxy_group_upstreams`` holds a group's narrowed, reordered list of the
instance's upstreams (``position``) and the group's own credential for an upstream,
encrypted at rest. A group with no positioned rows uses every instance upstream in
the order defined; a row with no position only keeps a credential.
``dependency_proxy_manifests.upstream`` names the upstream a manifest came from;
``NULL``, what every existing row gets, is the default upstream.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dependency_proxy_group_upstreams",
        sa.Column("group_id", sa.BigInteger, nullable=False),
        sa.Column("upstream", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer, nullable=True),
        sa.Column("username_encrypted", sa.LargeBinary, nullable=True),
        sa.Column("password_encrypted", sa.LargeBinary, nullable=True),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("group_id", "upstream", name="pk_dependency_proxy_group_upstreams"),
    )
    with op.batch_alter_table("dependency_proxy_manifests") as batch:
        batch.add_column(sa.Column("upstream", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dependency_proxy_manifests") as batch:
        batch.drop_column("upstream")
    op.drop_table("dependency_proxy_group_upstreams")
