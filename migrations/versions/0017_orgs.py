"""orgs: organisations (orgs) and their members (org_members)

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
        sa.PrimaryKeyConstraint("id", name="pk_org_members"),
    )
    op.create_index("ix_org_members_org", "org_members", ["org_id", "added_at_us"])
    op.create_index("ix_org_members_user", "org_members", ["user_id", "added_at_us"])


def downgrade() -> None:
    op.drop_index("ix_org_members_user", table_name="org_members")
    op.drop_index("ix_org_members_org", table_name="org_members")
    op.drop_table("org_members")
    op.drop_table("orgs")
