"""pricing: the rate card's immutable versions (rate_card_versions)

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_card_versions",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("card", sa.Text(), nullable=False),
        sa.Column("card_sha256", sa.String(64), nullable=False),
        sa.Column("effective_at_us", sa.BigInteger(), nullable=False),
        sa.Column("published_at_us", sa.BigInteger(), nullable=False),
        sa.Column("published_by", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_rate_card_versions"),
    )


def downgrade() -> None:
    op.drop_table("rate_card_versions")
