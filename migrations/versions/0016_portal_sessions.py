"""portal: the billing portal's single-use links and browser sessions (portal_sessions)

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "portal_sessions",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("return_url", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("link_expires_at_us", sa.BigInteger(), nullable=False),
        sa.Column("opened_at_us", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("cookie_hash", sa.String(length=64), nullable=True, unique=True),
        sa.Column("session_expires_at_us", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_index("ix_portal_sessions_created", "portal_sessions", ["created_at_us"])


def downgrade() -> None:
    op.drop_index("ix_portal_sessions_created", table_name="portal_sessions")
    op.drop_table("portal_sessions")
