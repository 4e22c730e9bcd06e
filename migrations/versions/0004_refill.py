"""refill

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

IN_FLIGHT = "status IN ('queued', 'running', 'retry_scheduled')"


def upgrade() -> None:
    op.create_table(
        "refill_configs",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("payment_method_id", sa.String(length=255), nullable=True),
        sa.Column("pm_brand", sa.String(length=32), nullable=False),
        sa.Column("pm_last4", sa.String(length=8), nullable=False),
        sa.Column("pm_exp_month", sa.Integer(), nullable=False),
        sa.Column("pm_exp_year", sa.Integer(), nullable=False),
        sa.Column("setup_intent_id", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("paused_reason", sa.String(length=64), nullable=False),
        sa.Column("recovery_url", sa.Text(), nullable=False),
        sa.Column("last_failure_reason", sa.String(length=200), nullable=False),
        sa.Column("cap_blocked_until_us", sa.BigInteger(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_refill_configs")),
    )
    op.create_table(
        "refill_jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=True),
        sa.Column("next_run_at_us", sa.BigInteger(), nullable=False),
        sa.Column("lease_until_us", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refill_jobs")),
    )
    op.create_index("ix_refill_jobs_status_next", "refill_jobs", ["status", "next_run_at_us"])
    # At most one refill in flight per account, enforced by the database.
    op.create_index(
        "uq_refill_jobs_in_flight",
        "refill_jobs",
        ["user_id"],
        unique=True,
        sqlite_where=sa.text(IN_FLIGHT),
        postgresql_where=sa.text(IN_FLIGHT),
    )


def downgrade() -> None:
    op.drop_index("uq_refill_jobs_in_flight", table_name="refill_jobs")
    op.drop_index("ix_refill_jobs_status_next", table_name="refill_jobs")
    op.drop_table("refill_jobs")
    op.drop_table("refill_configs")
