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
    text,
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
    # The ledger's own record of the transfer (not shown to callers): the lots a
    # wallet debit drew or a wallet credit filled ([kind, expiry, part] each),
    # the principal that charged a Spend or Capture, the charge a revenue share was paid by.
    Column("ledger", Text, nullable=False, server_default="{}"),
    # A reversal or a usage refund: the id of the transfer it corrects.
    Column("corrects", BigInteger, nullable=True),
    # The scoped key (api_keys) the transfer was made through or for: budgets and history by key.
    Column("key_id", String(64), nullable=True),
    # On an org's wallet: the member (user id) it was spent by or given back to.
    Column("member_id", String(128), nullable=True),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("debit_account <> credit_account", name="distinct_accounts"),
    Index("ix_transfers_corrects", "corrects"),
    Index("ix_transfers_member_id", "member_id", "id"),
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
    # The roll-over job finds allowance lots that ended before their tier's period did.
    Index("ix_lots_expiry", "expires_at_us"),
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
    # The lots the hold's credits came from: [[lot kind, lot expiry (us, 0: none), amount], ...]
    Column("lots", Text, nullable=False, default="[]"),
    Column("category", String(64), nullable=False, default=""),
    Column("description", String(500), nullable=False, default=""),
    Column("expires_at_us", BigInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("resolved_at_us", BigInteger, nullable=True),
    # The key the hold counts against (its budgets, in the window of created_at_us).
    Column("key_id", String(64), nullable=True),
    Column("member_id", String(128), nullable=True),
    Index("ix_holds_status_expiry", "status", "expires_at_us"),
    Index("ix_holds_user", "user_id"),
)

# What a transfer priced from usage used, and the price it was charged at: one
# row per priced Spend, Reserve (its HOLD transfer) and Capture, written in the
# ledger transaction of its transfer. Only priced transfers have one, so a
# spend by amount writes nothing more.
transfer_usage = Table(
    "transfer_usage",
    metadata,
    Column("transfer_id", BigInteger, primary_key=True, autoincrement=False),
    Column("meter", String(64), nullable=False),
    Column("quantity", BigInteger, nullable=False),
    # The dimension values, a JSON object with sorted keys.
    Column("dimensions", Text, nullable=False, default="{}"),
    Column("version", BigInteger, nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    Column("per_units", BigInteger, nullable=False),
    # The instant whose rate card version priced it (a capture: its hold's).
    Column("priced_at_us", BigInteger, nullable=False),
    # A hold's Reserve and Capture: the hold (Capture prices at the hold's version).
    Column("hold_id", String(64), nullable=True),
    # Only the rows that name a hold: a Spend's (most rows) adds no entry.
    Index(
        "ix_transfer_usage_hold_id", "hold_id",
        sqlite_where=text("hold_id IS NOT NULL"), postgresql_where=text("hold_id IS NOT NULL"),
    ),
)

# Stored responses of mutating requests, keyed by caller and request_id.
LIVE_RESPONSE = "length(response) > 0"
idempotency = Table(
    "idempotency",
    metadata,
    Column("key", String(320), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    # Empty once pruned (older than BILLING_IDEMPOTENCY_RETENTION): the key stays
    # as a tombstone, so a repeat is refused REQUEST_ID_EXPIRED, never applied again.
    Column("response", LargeBinary, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    # The responses still stored, oldest first: the pruning job's scan never walks tombstones.
    Index(
        "ix_idempotency_live_created", "created_at_us",
        sqlite_where=text(LIVE_RESPONSE), postgresql_where=text(LIVE_RESPONSE),
    ),
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

# ---- payments ------------------------------------------------------

# One row per money movement with Stripe (checkout purchases; refills and
# invoices may add their own kinds). Status is lowercase: pending, paid,
# failed, expired, refunded, partially_refunded, disputed (server/ledger/verify.py).
payments = Table(
    "payments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(128), nullable=False),
    Column("kind", String(24), nullable=False, default="checkout"),
    Column("status", String(24), nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", String(8), nullable=False, default="usd"),
    Column("credits", BigInteger, nullable=False),  # millicredits granted when paid
    # {scope}:CreatePaymentLink:{request_id}; the same request returns the same link.
    Column("request_key", String(320), nullable=True, unique=True),
    Column("fingerprint", String(64), nullable=False, default=""),
    Column("checkout_session_id", String(255), nullable=True, unique=True),
    Column("payment_url", Text, nullable=False, default=""),
    Column("expires_at_us", BigInteger, nullable=True),
    Column("payment_intent_id", String(255), nullable=True),
    Column("charge_id", String(255), nullable=True),
    Column("receipt_url", Text, nullable=False, default=""),
    Column("failure_reason", String(200), nullable=False, default=""),
    Column("refunded_cents", BigInteger, nullable=False, default=0),
    Column("refund_clawed", BigInteger, nullable=False, default=0),  # millicredits
    Column("dispute_id", String(255), nullable=True),
    Column("dispute_clawed", BigInteger, nullable=False, default=0),  # millicredits
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Column("paid_at_us", BigInteger, nullable=True),
    Index("ix_payments_user_created", "user_id", "created_at_us", "id"),
    Index("ix_payments_status_created", "status", "created_at_us"),
    Index("ix_payments_payment_intent", "payment_intent_id"),
    Index("ix_payments_charge", "charge_id"),
)

# The card off-session charges use (auto-refill, TopUp, the Pro upgrade), one
# per user, owned by payments. A card saved through a setup link is first
# known by its SetupIntent, resolved into payment_method_id when charged.
saved_cards = Table(
    "saved_cards",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("payment_method_id", String(255), nullable=True),
    Column("brand", String(32), nullable=False, default=""),
    Column("last4", String(8), nullable=False, default=""),
    Column("exp_month", Integer, nullable=False, default=0),
    Column("exp_year", Integer, nullable=False, default=0),
    Column("setup_intent_id", String(255), nullable=True),
    Column("updated_at_us", BigInteger, nullable=False),
)

# Every verified Stripe event, stored once by id (duplicate deliveries are no-ops).
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("type", String(100), nullable=False),
    Column("created", BigInteger, nullable=False),  # Stripe's timestamp (seconds)
    Column("payment_id", String(64), nullable=True),
    Column("outcome", String(64), nullable=False, default=""),
    Column("payload", Text, nullable=False),
    Column("received_at_us", BigInteger, nullable=False),
    # charge.* events: the charge's PaymentIntent. A charge.succeeded that comes
    # before its payment is linked to the PaymentIntent is found again by it.
    Column("stripe_ref", String(255), nullable=True),
    Index("ix_webhook_events_stripe_ref", "stripe_ref"),
)

# ---- tiers and earnings -----------------------------------------------

# A user's paid plan and scheduled changes (one row per user who ever asked).
# status: none | incomplete | active | past_due | canceled.
tier_subscriptions = Table(
    "tier_subscriptions",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("status", String(16), nullable=False, default="none"),
    Column("stripe_customer_id", String(255), nullable=True),
    Column("stripe_subscription_id", String(255), nullable=True, unique=True),
    # Set while a Pro upgrade waits for its first payment (Checkout link).
    Column("payment_url", Text, nullable=False, default=""),
    Column("checkout_session_id", String(255), nullable=True),
    # A scheduled change (downgrade at period end).
    Column("pending_tier", String(16), nullable=True),
    Column("pending_change_at_us", BigInteger, nullable=True),
    # A late or failed renewal keeps Pro until then; afterwards the user is on free.
    Column("grace_until_us", BigInteger, nullable=True),
    # The Stripe subscription must be cancelled (lapsed or replaced); a worker does it.
    Column("cancel_in_stripe", Boolean, nullable=False, default=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Index("ix_tier_subscriptions_customer", "stripe_customer_id"),
)

# History reads one side at a time, newest first (keyset on id). The index
# is on -id so that no plan can walk the primary key backwards instead: a
# cached generic plan on PostgreSQL did, past every other account's rows.
Index("ix_transfers_debit_newest", transfers.c.debit_account, -transfers.c.id)
Index("ix_transfers_credit_newest", transfers.c.credit_account, -transfers.c.id)

# Daily award limits sum a user's awards of one source since midnight (UTC);
# a filtered history page probes both (one probe per kind) before it scans,
# and a spending report reads its debits by kind and time.
Index("ix_transfers_credit_kind_created", transfers.c.credit_account, transfers.c.kind, transfers.c.created_at_us)
Index("ix_transfers_debit_kind_created", transfers.c.debit_account, transfers.c.kind, transfers.c.created_at_us)

# ---- auto-refill ----------------------------------------------------------

# One row per user who ever configured auto-refill. `state` is active, paused
# or action_required; queued/retrying is read from refill_jobs.
refill_configs = Table(
    "refill_configs",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("enabled", Boolean, nullable=False, default=False),
    Column("threshold", BigInteger, nullable=False, default=0),  # millicredits
    Column("amount_cents", BigInteger, nullable=False, default=0),
    Column("state", String(16), nullable=False, default="active"),
    Column("paused_reason", String(64), nullable=False, default=""),
    Column("recovery_url", Text, nullable=False, default=""),
    Column("last_failure_reason", String(200), nullable=False, default=""),
    # The monthly cap blocked a refill: no new job before this instant (month end).
    Column("cap_blocked_until_us", BigInteger, nullable=False, default=0),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

# Durable refill work, inserted in the same transaction as the balance change
# that crossed the threshold. status: queued | running | retry_scheduled (in
# flight) | succeeded | failed | skipped | action_required | paused.
refill_jobs = Table(
    "refill_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(128), nullable=False),
    Column("status", String(20), nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("credits", BigInteger, nullable=False),  # millicredits
    Column("attempts", Integer, nullable=False, default=0),  # charges tried (declines count)
    # The attempt being charged: also the payment id and the Stripe idempotency key.
    Column("payment_id", String(64), nullable=True),
    Column("next_run_at_us", BigInteger, nullable=False),
    Column("lease_until_us", BigInteger, nullable=False, default=0),
    Column("last_error", String(200), nullable=False, default=""),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Index("ix_refill_jobs_status_next", "status", "next_run_at_us"),
    # At most one refill in flight per account, enforced by the database.
    Index(
        "uq_refill_jobs_in_flight",
        "user_id",
        unique=True,
        sqlite_where=text("status IN ('queued', 'running', 'retry_scheduled')"),
        postgresql_where=text("status IN ('queued', 'running', 'retry_scheduled')"),
    ),
)


# ---- reliability ------------------------------------------------------------


# ---- admin ------------------------------------------------------------------

# The audit trail of admin changes: written in the same ledger transaction as
# the change itself (tx.rows(admin_actions)), so one never exists without the other.
admin_actions = Table(
    "admin_actions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("actor", String(128), nullable=False),  # the admin token's subject
    Column("action", String(64), nullable=False),  # the RPC: AdjustBalance, ReverseTransaction, ...
    Column("user_id", String(128), nullable=False),
    Column("reason", String(500), nullable=False, default=""),
    Column("request_id", String(128), nullable=False, default=""),
    Column("details", Text, nullable=False, default="{}"),  # JSON: the parameters
    Column("transfer_ids", Text, nullable=False, default="[]"),  # JSON list of the resulting transfers
    Column("created_at_us", BigInteger, nullable=False),
    Index("ix_admin_actions_created", "created_at_us", "id"),
    Index("ix_admin_actions_user", "user_id", "created_at_us"),
)

# ---- billing portal ------------------------------------------------

# One row per portal link (CreatePortalSession). The link's token and the
# browser session's cookie are kept as SHA-256 hashes only: the link opens
# once (opened_at_us set), then the cookie names the session until it ends.
portal_sessions = Table(
    "portal_sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 hex of the link token
    Column("user_id", String(128), nullable=False),
    Column("return_url", Text, nullable=False, default=""),
    Column("created_at_us", BigInteger, nullable=False),
    Column("link_expires_at_us", BigInteger, nullable=False),
    Column("opened_at_us", BigInteger, nullable=False, default=0),
    Column("cookie_hash", String(64), nullable=True, unique=True),  # sha256 hex of the session cookie
    Column("session_expires_at_us", BigInteger, nullable=False, default=0),
    Index("ix_portal_sessions_created", "created_at_us"),
)

# ---- scoped keys -------------------------------------------------------------

# A bearer secret for an agent or a job, spending from its owner's wallet
# under budgets. Only the secret's SHA-256 is stored.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(128), nullable=False),
    Column("label", String(100), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("secret_prefix", String(16), nullable=False),
    # [[window, limit_millicredits], ...]
    Column("budgets", Text, nullable=False, default="[]"),
    # ["sandbox", ...]; empty: any category
    Column("categories", Text, nullable=False, default="[]"),
    Column("max_spend", BigInteger, nullable=False, default=0),  # 0: no limit
    Column("expires_at_us", BigInteger, nullable=False, default=0),  # 0: never
    Column("revoked_at_us", BigInteger, nullable=False, default=0),  # 0: live
    Column("created_by", String(160), nullable=False, default=""),
    Column("created_at_us", BigInteger, nullable=False),
    Index("ix_api_keys_user", "user_id", "created_at_us"),
)

# What a key has used (spent plus held) in its current windows: the start of
# the window each counter is for (0: never used), and the lifetime total. A
# narrow row of its own, one per key (made with it): a batch rewrites one such
# row per key it spends through, not the key's wide row.
key_usage = Table(
    "key_usage",
    metadata,
    Column("id", String(64), primary_key=True),  # the key's (api_keys.id)
    Column("hour_start_us", BigInteger, nullable=False, default=0),
    Column("hour_used", BigInteger, nullable=False, default=0),
    Column("day_start_us", BigInteger, nullable=False, default=0),
    Column("day_used", BigInteger, nullable=False, default=0),
    Column("month_start_us", BigInteger, nullable=False, default=0),
    Column("month_used", BigInteger, nullable=False, default=0),
    Column("lifetime_used", BigInteger, nullable=False, default=0),
    # The end of the earliest window with use recorded (0: none): the budget
    # reset job reads the keys due by this index, not every key.
    Column("resets_at_us", BigInteger, nullable=False, default=0, server_default="0"),
    Index("ix_key_usage_resets", "resets_at_us", "id"),
)


# ---- organisations ------------------------------------------------------------

# A team's pooled wallet: the org's id is also its wallet's owner id
# (`wallet:org_...`), so the org has its own lots, history, payments and tier.
orgs = Table(
    "orgs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)

# One row per (org, user) ever added; a removed member keeps the row
# (removed_at_us > 0), so that past spends stay attributed to them. Written
# only by the ledger writer under the org wallet's lock: the owner count and
# a spend's membership check never race a change.
org_members = Table(
    "org_members",
    metadata,
    Column("id", String(320), primary_key=True),  # keys.org_member(org_id, user_id)
    Column("org_id", String(64), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("added_at_us", BigInteger, nullable=False),
    Column("removed_at_us", BigInteger, nullable=False, default=0),  # 0: a member
    # The member's budgets on the org's wallet and their use, as a key's
    # (api_keys): [[window, limit_millicredits], ...], and per window counter
    # the start of the window it is for (0: never used).
    Column("budgets", Text, nullable=False, default="[]"),
    Column("hour_start_us", BigInteger, nullable=False, default=0),
    Column("hour_used", BigInteger, nullable=False, default=0),
    Column("day_start_us", BigInteger, nullable=False, default=0),
    Column("day_used", BigInteger, nullable=False, default=0),
    Column("month_start_us", BigInteger, nullable=False, default=0),
    Column("month_used", BigInteger, nullable=False, default=0),
    Column("lifetime_used", BigInteger, nullable=False, default=0),
    Index("ix_org_members_org", "org_id", "added_at_us"),
    Index("ix_org_members_user", "user_id", "added_at_us"),
)


# ---- events -----------------------------------------------------------------

# The outbox: one row per event, inserted in the same ledger transaction as the
# change it reports. Ids come from event_counter under its row lock, taken just
# before the batch's commit: ids are in commit order, so a cursor never skips
# an event that commits later with a smaller id.
events = Table(
    "events",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(40), nullable=False),
    Column("user_id", String(128), nullable=False, default=""),  # empty: the service's own events
    Column("payload", Text, nullable=False, default="{}"),
    Column("created_at_us", BigInteger, nullable=False),
    # Events a worker emits once per subject (a lot's expiry, a forecast's period).
    Column("dedup_key", String(320), nullable=True, unique=True),
    Index("ix_events_user_id", "user_id", "id"),
    Index("ix_events_created", "created_at_us"),
)

# One row: the last event id given out.
event_counter = Table(
    "event_counter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_id", BigInteger, nullable=False, default=0),
)

# A wallet's own alert settings; a wallet without a row has the defaults.
balance_alerts = Table(
    "balance_alerts",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("thresholds", Text, nullable=False, default="[]"),  # JSON list of millicredits
    Column("expiry_lead_seconds", BigInteger, nullable=False, default=0),
    Column("forecast_days", Integer, nullable=False, default=0),
    Column("updated_at_us", BigInteger, nullable=False),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("event_types", Text, nullable=False, default="[]"),  # JSON list; empty: all
    Column("description", String(500), nullable=False, default=""),
    Column("secret", String(200), nullable=False),
    Column("previous_secret", String(200), nullable=False, default=""),
    Column("previous_secret_until_us", BigInteger, nullable=False, default=0),
    Column("status", String(16), nullable=False, default="enabled"),
    # Every attempt since this instant failed (0: the last one succeeded).
    Column("failing_since_us", BigInteger, nullable=False, default=0),
    # The last event id turned into deliveries of this endpoint.
    Column("cursor", BigInteger, nullable=False, default=0),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

# One event's delivery to one endpoint. Per endpoint and wallet, only the
# oldest pending delivery is attempted (in order per wallet); a claim sets
# lease_until_us, so a second process skips it and a dead one's claim lapses.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(100), primary_key=True),  # endpoint id / event id
    Column("endpoint_id", String(64), nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("user_id", String(128), nullable=False, default=""),
    Column("status", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at_us", BigInteger, nullable=False, default=0),
    Column("lease_until_us", BigInteger, nullable=False, default=0),
    Column("last_response_code", Integer, nullable=False, default=0),
    Column("last_error", String(200), nullable=False, default=""),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Index("ix_webhook_deliveries_endpoint_status", "endpoint_id", "status", "event_id"),
    # A wallet's earlier pending delivery (the claim's order per wallet).
    Index("ix_webhook_deliveries_wallet", "endpoint_id", "user_id", "event_id"),
    Index("ix_webhook_deliveries_created", "created_at_us"),
)

# ---- pricing ----------------------------------------------------------------

# The rate card's versions: immutable once written (never UPDATE or DELETE).
# The card is stored in its canonical JSON (sorted keys), so equal cards have
# equal text and hash; the version in effect at an instant is the one with the
# latest effective_at_us at or before it (of equal ones, the highest version).
rate_card_versions = Table(
    "rate_card_versions",
    metadata,
    Column("version", BigInteger, primary_key=True, autoincrement=False),  # 1, 2, ... in publishing order
    Column("card", Text, nullable=False),  # canonical JSON (server/pricing/card.py)
    Column("card_sha256", String(64), nullable=False),
    Column("effective_at_us", BigInteger, nullable=False),
    Column("published_at_us", BigInteger, nullable=False),
    # The admin's subject, or "config" for the rate card file applied at start.
    Column("published_by", String(128), nullable=False),
    # The PublishRateCard request_id (its idempotency record is the ledger's);
    # for the file, "config:" and the card's hash.
    Column("request_id", String(200), nullable=False, default=""),
)
