"""Failed logins are counted per (username, client address) and per address.

Counts are kept under hashed keys. The old keys hashed a username alone, or an address
with another label than the new address keys; no new key equals an old one and a hash
cannot be turned back into its parts, so no old count can be carried over, and none
would ever be read again. Both directions therefore forget the counts, which lifts at
most one window (``DEPENDENCY_PROXY_LOGIN_FAILURE_WINDOW_SECONDS``) of throttling.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text("DELETE FROM dependency_proxy_login_failures"))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM dependency_proxy_login_failures"))
