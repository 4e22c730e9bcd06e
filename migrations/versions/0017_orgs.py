"""orgs: organisations (orgs), their members with budgets (org_members), and the member of each transfer and hold

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_orgs"),
    )
    op.create_table(
        "org_members",
        sa.Column("id", sa.String(320), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("added_at_us", sa.BigInteger(), nullable=False),
        sa.Column("removed_at_us", sa.BigInteger(), nullable=False),
        sa.Column("budgets", sa.Text(), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in (
            "hour_start_us", "hour_used", "day_start_us", "day_used", "month_start_us", "month_used", "lifetime_used",
        )),
        sa.PrimaryKeyConstraint("id", name="pk_org_members"),
    )
    op.create_index("ix_org_members_org", "org_members", ["org_id", "added_at_us"])
    op.create_index("ix_org_members_user", "org_members", ["user_id", "added_at_us"])
    # Nullable additions: no table rebuild on SQLite.
    op.add_column("transfers", sa.Column("member_id", sa.String(128), nullable=True))
    op.create_index("ix_transfers_member_id", "transfers", ["member_id", "id"])
    op.add_column("holds", sa.Column("member_id", sa.String(128), nullable=True))


def downgrade() -> None:
    op.drop_column("holds", "member_id")
    op.drop_index("ix_transfers_member_id", table_name="transfers")
    op.drop_column("transfers", "member_id")
    op.drop_index("ix_org_members_user", table_name="org_members")
    op.drop_index("ix_org_members_org", table_name="org_members")
    op.drop_table("org_members")
    op.drop_table("orgs")
