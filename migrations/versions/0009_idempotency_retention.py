"""idempotency retention: an index of the stored responses not yet pruned
(a pruned row keeps its key with an empty response, as a tombstone)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

LIVE_RESPONSE = "length(response) > 0"


def upgrade() -> None:
    op.create_index(
        "ix_idempotency_live_created", "idempotency", ["created_at_us"],
        sqlite_where=sa.text(LIVE_RESPONSE), postgresql_where=sa.text(LIVE_RESPONSE),
    )


def downgrade() -> None:
    op.drop_index("ix_idempotency_live_created", table_name="idempotency")
