"""early receipts: webhook_events.stripe_ref

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_events", sa.Column("stripe_ref", sa.String(length=255), nullable=True))
    op.create_index("ix_webhook_events_stripe_ref", "webhook_events", ["stripe_ref"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_stripe_ref", table_name="webhook_events")
    op.drop_column("webhook_events", "stripe_ref")
