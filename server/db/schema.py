"""The database schema (SQLAlchemy Core). Alembic migrations are generated from it.

Timestamps are integer microseconds since the epoch (UTC) so that SQLite and
PostgreSQL compare and index them the same way. Amounts are BIGINT millicredits.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(160), primary_key=True),
    Column("kind", String(16), nullable=False),  # wallet | system
    Column("user_id", String(128), nullable=True, unique=True),
    Column("balance", BigInteger, nullable=False, default=0),
    # Wallets: credits held by active holds (already moved to system:holds).
    Column("pending", BigInteger, nullable=False, default=0),
    Column("earned_total", BigInteger, nullable=False, default=0),
    Column("spent_total", BigInteger, nullable=False, default=0),
    Column("unlimited_overdraft", Boolean, nullable=False, default=False),
    Column("version", BigInteger, nullable=False, default=0),
    Column("created_at_us", BigInteger, nullable=False),
)

transfers = Table(
    "transfers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # Unique per effect: a request, a payment grant, a month's allowance...
    Column("key", String(320), nullable=False, unique=True),
    Column("debit_account", String(160), nullable=False),
    Column("credit_account", String(160), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("description", String(500), nullable=False, default=""),
    Column("category", String(64), nullable=False, default=""),
    # A domain reference: hold id, payment id, app id, award source ref.
    Column("ref", String(200), nullable=False, default=""),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("debit_balance_after", BigInteger, nullable=False),
    Column("credit_balance_after", BigInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("debit_account <> credit_account", name="distinct_accounts"),
    # History reads one side at a time, newest first (keyset on id).
    Index("ix_transfers_debit_id", "debit_account", "id"),
    Index("ix_transfers_credit_id", "credit_account", "id"),
)

# Balance buckets of a wallet, spent in order: allowance, earned, purchased.
lots = Table(
    "lots",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(160), nullable=False),
    Column("kind", String(16), nullable=False),  # allowance | earned | purchased
    Column("expires_at_us", BigInteger, nullable=False, default=0),  # 0: never
    Column("remaining", BigInteger, nullable=False, default=0),
    Column("granted", BigInteger, nullable=False, default=0),
    Column("created_at_us", BigInteger, nullable=False),
    UniqueConstraint("account_id", "kind", "expires_at_us"),
    CheckConstraint("remaining >= 0", name="remaining_nonneg"),
)

holds = Table(
    "holds",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(160), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("captured", BigInteger, nullable=False, default=0),
    Column("status", String(16), nullable=False),  # active|captured|released|expired
    Column("lots", Text, nullable=False, default="[]"),  # [[lot_id, amount], ...]
    Column("category", String(64), nullable=False, default=""),
    Column("description", String(500), nullable=False, default=""),
    Column("expires_at_us", BigInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("resolved_at_us", BigInteger, nullable=True),
    Index("ix_holds_status_expiry", "status", "expires_at_us"),
    Index("ix_holds_user", "user_id"),
)

# Stored responses of mutating requests, keyed by caller and request_id.
idempotency = Table(
    "idempotency",
    metadata,
    Column("key", String(320), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("tier", String(16), nullable=False, default="free"),
    # Enterprise may carry a custom allowance; NULL means the catalogue's.
    Column("monthly_credits", BigInteger, nullable=True),
    Column("period_start_us", BigInteger, nullable=False),
    Column("period_end_us", BigInteger, nullable=False),
    Column("flagged_reason", String(200), nullable=True),
    Column("stripe_customer_id", String(100), nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    Index("ix_users_period_end", "period_end_us"),
)

# ---- payments (issue 3) ------------------------------------------------------

# ---- tiers and earnings (issue 5) -----------------------------------------------

# ---- auto-refill (issue 4) ----------------------------------------------------------

# ---- reliability (issue 7) ------------------------------------------------------------
