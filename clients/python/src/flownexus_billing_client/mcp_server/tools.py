"""The seed's nine tools: names, arguments, JSON schemas and descriptions, and
how each maps onto one gRPC call. Units are the seed's (see units.py); an
agent reads only the descriptions, so they carry the units and the limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from flownexus.billing.v1 import (
    balance_pb2,
    common_pb2,
    earnings_pb2,
    history_pb2,
    keys_pb2,
    payments_pb2,
    refill_pb2,
    tier_pb2,
)

from flownexus_billing_client.client import BillingClient
from flownexus_billing_client.mcp_server.auth import KEY_SECRET_PREFIX
from flownexus_billing_client.mcp_server.confirmation import Charge
from flownexus_billing_client.mcp_server.units import (
    Refusal,
    cents_of,
    credits,
    enum_word,
    iso,
    millicredits_of,
    usd,
)

MAX_LIMIT = 100
SOURCES = ("challenge", "app_usage", "referral")
UPGRADE_TIERS = ("pro", "enterprise")

# The request_id is asked for (given or derived) only once the arguments are valid.
Handler = Callable[[BillingClient, "Args", Callable[[], str]], Awaitable[dict[str, Any]]]
# The charge a call would start that the human must confirm first, or None; given the
# amount in cents above which a payment link needs confirmation.
ChargeCheck = Callable[[BillingClient, "Args", int], Awaitable[Charge | None]]


@dataclass(frozen=True)
class Hints:
    """The MCP tool annotations a host decides on (docs/agents.md explains each choice)."""

    read_only: bool
    destructive: bool
    idempotent: bool
    open_world: bool


# Reads: the ledger only, nothing changes, any repeat is harmless.
READ = Hints(read_only=True, destructive=False, idempotent=True, open_world=False)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    handler: Handler
    mutating: bool = False
    hints: Hints = READ
    charge: ChargeCheck | None = None


# ---- schema pieces ----------------------------------------------------------------------

def _obj(properties: dict[str, Any], required: list[str], *, extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": extra}


def _n(description: str) -> dict[str, Any]:
    return {"type": "number", "description": description}


def _or_null(schema: dict[str, Any], description: str) -> dict[str, Any]:
    # anyOf, not "type": [..., "null"]: hosts that map schemas onto one type per field accept it.
    return {"anyOf": [schema, {"type": "null"}], "description": description}


def _s(description: str, *, nullable: bool = False) -> dict[str, Any]:
    return _or_null({"type": "string"}, description) if nullable else {"type": "string", "description": description}


def _date(description: str, *, nullable: bool = False) -> dict[str, Any]:
    text = description + " (ISO 8601, UTC)"
    date = {"type": "string", "format": "date-time"}
    return _or_null(date, text) if nullable else {**date, "description": text}


TIER = {"type": "string", "enum": ["free", "pro", "enterprise"], "description": "The plan: free, pro or enterprise."}
USER_ID = {"type": "string", "minLength": 1, "maxLength": 128, "description": "The user's id."}
REQUEST_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "description": (
        "Optional idempotency key, 1-128 printable ASCII characters, scoped to you. Send the same "
        "request_id when you retry: the call is applied once and the retry returns the first result. "
        "The same request_id with different arguments is refused (request_id_reused). Without one the "
        "server derives a key that is stable only across a resend of this very tool call, and says so "
        "(request_id_source: derived); over HTTP without a session it cannot, so there it is required."
    ),
}
ORG_ID = {
    "type": "string",
    "description": (
        "Optional: act on this organisation's shared wallet (\"org_\" and 32 hex digits) instead of your own; "
        "\"\" means your own. Defaults to the org the server was started for, if any. Members may read and "
        "spend; only the org's owners and admins may buy, change auto-refill or the tier (org_role_required)."
    ),
}
LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "description": f"Page size, 1 to {MAX_LIMIT}."}
CURSOR = {"type": "string", "description": "Optional: next_cursor from the previous page, to read further back."}
IDEMPOTENCY_OUT = {
    "request_id": _s("The idempotency key this call used: send it again as request_id to retry safely."),
    "request_id_source": {
        "type": "string",
        "enum": ["given", "derived"],
        "description": "given: your request_id; derived: made by the server from this tool call.",
    },
}
TRANSACTION = _obj(
    {
        "id": _s("The ledger transfer id."),
        "date": _date("When the ledger applied it"),
        "amount": _n("Credits, signed: positive when credits arrived, negative when they left."),
        "type": _s("purchase, spend, hold, hold_capture, hold_release, award, allowance_grant, "
                   "allowance_expiry, refund_clawback, dispute_clawback, dispute_restore, auto_refill, "
                   "revenue_share or adjustment."),
        "description": _s("What it was for."),
        "balance_after": _n("The balance in credits right after it."),
        "category": _s("The usage category of a spend (sandbox, training, ...), else empty."),
        "meter": _s("A spend priced from usage: the meter (e.g. sandbox.seconds); else null.", nullable=True),
        "quantity": _or_null({"type": "integer"}, "A spend priced from usage: the units of the meter used; else null."),
    },
    ["date", "amount", "type", "description"],
    extra=True,
)


CONFIRM = {
    "type": "boolean",
    "description": (
        "Only for hosts that cannot ask the human (no MCP elicitation): a charge that needs "
        "confirmation is refused with confirmation_required and its exact amounts; show them to the "
        "human and, once they agree, call again with confirm: true. Hosts with elicitation ask the "
        "human directly and this argument is ignored."
    ),
}


def _with_request_id(properties: dict[str, Any]) -> dict[str, Any]:
    return {**properties, "request_id": REQUEST_ID}


def _charging(properties: dict[str, Any]) -> dict[str, Any]:
    return {**_with_request_id(properties), "confirm": CONFIRM}


def _on_wallet(properties: dict[str, Any]) -> dict[str, Any]:
    return {**properties, "org_id": ORG_ID}


# ---- arguments --------------------------------------------------------------------------

class Args:
    """The tool's arguments; anything off-schema is a structured refusal."""

    def __init__(self, values: dict[str, Any], schema: dict[str, Any], *, org_id: str = "") -> None:
        unknown = sorted(set(values) - set(schema["properties"]))
        if unknown:
            raise Refusal("invalid_argument", f"unknown argument(s): {', '.join(unknown)}", {"fields": ",".join(unknown)})
        self.values = values
        self.default_org = org_id  # the org the server was started for; "" for none

    def org(self) -> str:
        """The org whose wallet the tool acts on: the argument (\"\" is the caller's own), else the server's."""
        if "org_id" not in self.values:
            return self.default_org
        value = self.values["org_id"]
        if not isinstance(value, str):
            raise Refusal("invalid_argument", "org_id must be a string", {"field": "org_id"})
        return value

    def has(self, name: str) -> bool:
        return self.values.get(name) is not None

    def required(self, name: str) -> Any:
        if not self.has(name):
            raise Refusal("invalid_argument", f"{name} is required", {"field": name})
        return self.values[name]

    def text(self, name: str, *, required: bool = True) -> str:
        value = self.required(name) if required else self.values.get(name)
        if value is None:
            return ""
        if not isinstance(value, str) or (required and not value):
            raise Refusal("invalid_argument", f"{name} must be a non-empty string", {"field": name})
        return value

    def boolean(self, name: str) -> bool:
        value = self.required(name)
        if not isinstance(value, bool):
            raise Refusal("invalid_argument", f"{name} must be true or false", {"field": name})
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.required(name)
        if value not in choices:
            raise Refusal(
                "invalid_argument", f"{name} must be one of: {', '.join(choices)}", {"field": name, "allowed": ",".join(choices)}
            )
        return str(value)

    def limit(self) -> int:
        value = self.required("limit")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
            raise Refusal(
                "invalid_limit", f"limit must be an integer from 1 to {MAX_LIMIT}; page further with cursor",
                {"field": "limit", "min": 1, "max": MAX_LIMIT, "got": str(value)},
            )
        return value


# ---- conversions ------------------------------------------------------------------------

def _tier(value: int) -> str:
    return enum_word(common_pb2.Tier.Name(value), "TIER_")


def _org_out(org: str) -> dict[str, Any]:
    return {"org_id": org} if org else {}


def transaction(t: common_pb2.Transaction) -> dict[str, Any]:
    return {
        "id": t.id,
        "date": iso(t.date),
        "amount": credits(t.amount_millicredits),
        "type": enum_word(common_pb2.TransactionType.Name(t.type), "TRANSACTION_TYPE_"),
        "description": t.description,
        "balance_after": credits(t.balance_after_millicredits),
        "category": t.category,
        "meter": t.usage.meter if t.HasField("usage") else None,
        "quantity": t.usage.quantity if t.HasField("usage") else None,
    }


def _auto_refill(a: refill_pb2.AutoRefill) -> dict[str, Any]:
    pm = a.payment_method if a.HasField("payment_method") else None
    return {
        "enabled": a.enabled,
        "threshold": credits(a.threshold_millicredits),
        "amount": usd(a.amount_cents),
        "next_charge": a.next_charge,
        "credits_amount": credits(a.credits_amount_millicredits),
        "state": enum_word(refill_pb2.AutoRefillState.Name(a.state), "AUTO_REFILL_STATE_"),
        "paused_reason": a.paused_reason.lower() or None,
        "recovery_url": a.recovery_url or None,
        "payment_method": {"brand": pm.brand, "last4": pm.last4, "exp_month": pm.exp_month, "exp_year": pm.exp_year} if pm else None,
        "monthly_cap": usd(a.monthly_cap_cents),
        "monthly_used": usd(a.monthly_used_cents),
    }


# ---- the tools --------------------------------------------------------------------------

async def check_balance(api: BillingClient, args: Args, request_id: Callable[[], str]) -> dict[str, Any]:
    org = args.org()
    r = await api.balance.CheckBalance(balance_pb2.CheckBalanceRequest(org_id=org))
    out: dict[str, Any] = {
        "credits": credits(r.credits_millicredits),
        "auto_refill": r.auto_refill,
        "threshold": credits(r.threshold_millicredits),
        "tier": _tier(r.tier),
        "pending": credits(r.pending_millicredits),
        "auto_refill_paused_reason": r.auto_refill_paused_reason.lower() or None,
        **_org_out(org),
    }
    if api.token.startswith(KEY_SECRET_PREFIX):  # an agent's scoped key: what it may still spend
        key = (await api.keys.GetKey(keys_pb2.GetKeyRequest())).key
        out["key"] = {
            "key_id": key.id,
            "label": key.label,
            "budgets": [
                {
                    "window": enum_word(keys_pb2.BudgetWindow.Name(b.window), "BUDGET_WINDOW_"),
                    "limit": credits(b.limit_millicredits),
                    "used": credits(b.used_millicredits),
                    "remaining": credits(b.remaining_millicredits),
                    "resets_at": iso(b.resets_at) if b.HasField("resets_at") else None,
                }
                for b in key.budgets
            ],
        }
    return out


async def ruv_balance(api: BillingClient, args: Args, request_id: Callable[[], str]) -> dict[str, Any]:
    org = args.org()
    r = await api.balance.GetBalance(balance_pb2.GetBalanceRequest(user_id=args.text("user_id"), org_id=org))
    return {
        **_org_out(org),
        "user_id": r.user_id,
        "credits": credits(r.credits_millicredits),
        "pending": credits(r.pending_millicredits),
        "earned_total": credits(r.earned_total_millicredits),
        "spent_total": credits(r.spent_total_millicredits),
        "tier": _tier(r.tier),
        "unlimited_overdraft": r.unlimited_overdraft,
        "lots": [
            {
                "kind": enum_word(common_pb2.LotKind.Name(lot.kind), "LOT_KIND_"),
                "remaining": credits(lot.remaining_millicredits),
                "expires_at": iso(lot.expires_at) if lot.HasField("expires_at") else None,
            }
            for lot in r.lots
        ],
    }


async def create_payment_link(api: BillingClient, args: Args, request_id: Callable[[], str]) -> dict[str, Any]:
    cents = cents_of(args.required("amount"))
    org = args.org()
    r = await api.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=cents, request_id=request_id(), org_id=org)
    )
    return {
        **_org_out(org),
        "payment_url": r.payment_url,
        "expires_at": iso(r.expires_at),
        "credits_amount": credits(r.credits_amount_millicredits),
        "amount": usd(cents),
        "payment_id": r.payment_id,
    }


async def configure_auto_refill(api: BillingClient, args: Args, request_id: Callable[[], str]) -> dict[str, Any]:
    enabled = args.boolean("enabled")
    if enabled and not (args.has("threshold") and args.has("amount")):
        raise Refusal("invalid_argument", "enabling auto-refill needs threshold (credits) and amount (USD)",
                      {"field": "threshold" if not args.has("threshold") else "amount"})
    threshold = millicredits_of(args.values["threshold"], "threshold") if args.has("threshold") else 0
    cents = cents_of(args.values["amount"]) if args.has("amount") else 0
    r = await api.refill.ConfigureAutoRefill(
        refill_pb2.ConfigureAutoRefillRequest(
            enabled=enabled, threshold_millicredits=threshold, amount_cents=cents, request_id=request_id(),
            org_id=args.org(),
        )
    )
    return {**_auto_refill(r.auto_refill), **_org_out(args.org())}


async def ruv_history(api: BillingClient, args: Args, request_id: Callable[[], str]) -> dict[str, Any]:
    user, size, cursor = args.text("user_id"), args.limit(), args.text("cursor", required=False)
    r = await api.history.ListTransactions(
        history_pb2.ListTransactionsRequest(user_id=user, page_size=size, page_token=cursor, org_id=args.org())
    )
    return {
        **_org_out(args.org()),
        "user_id": user,
        "transactions": [transaction(t) for t in r.transactions],
        "next_cursor": r.next_page_token or None,
    }


async def get_payment_history(api: BillingClient, args: Args, request_id: Callable[[], str]) -> dict[str, Any]:
    size, cursor = args.limit(), args.text("cursor", required=False)
    r = await api.payments.ListPayments(
        payments_pb2.ListPaymentsRequest(page_size=size, page_token=cursor, org_id=args.org())
    )
    return {
        "payments": [
            {
                "id": p.id,
                "date": iso(p.date),
                "amount": usd(p.amount_cents),
                "currency": p.currency,
                "status": enum_word(payments_pb2.PaymentStatus.Name(p.status), "PAYMENT_STATUS_"),
                "invoice_url": p.invoice_url or None,
                "credits": credits(p.credits_millicredits),
                "kind": enum_word(payments_pb2.PaymentKind.Name(p.kind), "PAYMENT_KIND_"),
                "failure_reason": p.failure_reason or None,
                "refunded_amount": usd(p.refunded_cents),
                "payment_url": p.payment_url or None,
            }
            for p in r.payments
        ],
        "next_cursor": r.next_page_token or None,
    }


async def user_upgrade(api: BillingClient, args: Args, request_id: Callable[[], str]) -> dict[str, Any]:
    user, tier = args.text("user_id"), args.choice("tier", UPGRADE_TIERS)
    monthly = millicredits_of(args.values["monthly_credits"], "monthly_credits") if args.has("monthly_credits") else 0
    r = await api.tier.UpgradeTier(
        tier_pb2.UpgradeTierRequest(
            user_id=user, tier=f"TIER_{tier.upper()}", request_id=request_id(),
            monthly_credits_millicredits=monthly, org_id=args.org(),
        )
    )
    status = enum_word(tier_pb2.UpgradeStatus.Name(r.status), "UPGRADE_STATUS_")
    done = status == "completed"
    return {
        **_org_out(args.org()),
        "user_id": user,
        "new_tier": _tier(r.new_tier),
        "monthly_credits": credits(r.monthly_credits_millicredits),
        # Not in force before it is paid: no effective date is claimed until then.
        "effective_date": iso(r.effective_date) if done else None,
        "status": status,
        "completed": done,
        "payment_url": r.payment_url or None,
    }


async def app_store_earn_ruv(api: BillingClient, args: Args, request_id: Callable[[], str]) -> dict[str, Any]:
    user = args.text("user_id")
    amount = millicredits_of(args.required("amount"), "amount")
    r = await api.earnings.AwardCredits(
        earnings_pb2.AwardCreditsRequest(
            user_id=user,
            amount_millicredits=amount,
            reason=args.text("reason"),
            source=f"EARNING_SOURCE_{args.choice('source', SOURCES).upper()}",
            source_ref=args.text("source_ref", required=False),
            request_id=request_id(),
        )
    )
    return {"user_id": user, "transaction": transaction(r.transaction), "credits": credits(r.credits_millicredits)}


async def user_stats(api: BillingClient, args: Args, request_id: Callable[[], str]) -> dict[str, Any]:
    org = args.org()
    r = await api.earnings.GetUserStats(earnings_pb2.GetUserStatsRequest(user_id=args.text("user_id"), org_id=org))
    return {
        **_org_out(org),
        "user_id": r.user_id,
        "credits_earned": credits(r.credits_earned_millicredits),
        "credits_spent": credits(r.credits_spent_millicredits),
        "apps_published": r.apps_published,
        "challenges_completed": r.challenges_completed,
        "app_revenue": credits(r.app_revenue_millicredits),
    }


# ---- charges that need the human's confirmation -----------------------------------------

def _dollars(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


async def payment_link_charge(api: BillingClient, args: Args, above_cents: int) -> Charge | None:
    cents = cents_of(args.required("amount"))
    if cents <= above_cents:
        return None
    return Charge(
        f"Create a payment link for {_dollars(cents)} (USD) to buy credits? Payment links above "
        f"{_dollars(above_cents)} need your confirmation.",
        {"amount": usd(cents), "confirm_above": usd(above_cents)},
    )


async def auto_refill_charge(api: BillingClient, args: Args, above_cents: int) -> Charge | None:
    if not args.boolean("enabled") or not (args.has("threshold") and args.has("amount")):
        return None  # disabling charges nothing; an incomplete enable is refused by the tool
    threshold = millicredits_of(args.values["threshold"], "threshold")
    cents = cents_of(args.values["amount"])
    return Charge(
        f"Enable auto-refill? Your saved card will be charged {_dollars(cents)} (USD) every time your "
        f"balance falls below {credits(threshold):,} credits, until you disable it.",
        {"amount": usd(cents), "threshold": credits(threshold), "recurring": "per refill"},
    )


async def upgrade_charge(api: BillingClient, args: Args, above_cents: int) -> Charge | None:
    user, tier = args.text("user_id"), args.choice("tier", UPGRADE_TIERS)
    if tier != "pro":
        return None  # Enterprise is set by an admin, at a negotiated price: nothing is charged here
    catalogue = await api.tier.ListTiers(tier_pb2.ListTiersRequest())
    pro = next(t for t in catalogue.tiers if t.tier == common_pb2.Tier.TIER_PRO)
    return Charge(
        f"Upgrade {('the org ' + args.org()) if args.org() else user} to Pro for {_dollars(pro.price_cents)} (USD) per month, charged every month "
        f"until cancelled, with {credits(pro.monthly_credits_millicredits):,} credits each month?",
        {"price": usd(pro.price_cents), "monthly_credits": credits(pro.monthly_credits_millicredits), "recurring": "monthly"},
    )


_UNITS = "Credits are whole credits as JSON numbers with up to 3 decimals (12.345)."
_ROLES_OTHER = "A user token may name only itself; a service or admin token may name any user."

TOOLS: dict[str, ToolSpec] = {
    t.name: t
    for t in [
        ToolSpec(
            "check_balance",
            "Check balance",
            f"Your own balance at a glance: credits available now, whether auto-refill is on, its threshold "
            f"(credits), your tier (free, pro, enterprise) and credits held by open reservations. {_UNITS} "
            "Check it before a heavy operation; buy with create_payment_link when it is low. Called with a "
            "scoped key, it also shows what the key may still spend in each budget window (key).",
            _obj(_on_wallet({}), []),
            _obj(
                {
                    "credits": _n("Credits available to spend now (may be negative after a refund or dispute)."),
                    "auto_refill": {"type": "boolean", "description": "Whether auto-refill is enabled."},
                    "threshold": _n("Auto-refill triggers when credits fall below this many credits."),
                    "tier": TIER,
                    "pending": _n("Credits reserved by open holds."),
                    "auto_refill_paused_reason": _s("Why auto-refill paused itself, if it did.", nullable=True),
                    "key": _obj(
                        {
                            "key_id": _s("The scoped key this server acts with."),
                            "label": _s("The key's label."),
                            "budgets": {
                                "type": "array",
                                "description": "The key's budgets: spends past one are refused (budget_exceeded).",
                                "items": _obj(
                                    {"window": _s("hour, day, month or lifetime (UTC windows)."),
                                     "limit": _n("Credits per window."), "used": _n("Credits used in this window."),
                                     "remaining": _n("Credits the key may still spend in this window."),
                                     "resets_at": _date("When the window ends; null for lifetime", nullable=True)},
                                    ["window", "limit", "used", "remaining", "resets_at"],
                                ),
                            },
                        },
                        ["key_id", "label", "budgets"],
                    ),
                },
                ["credits", "auto_refill", "threshold", "tier"],
                extra=True,
            ),
            check_balance,
        ),
        ToolSpec(
            "ruv_balance",
            "Detailed balance",
            f"A user's detailed rUv balance: credits, pending (reserved), total ever earned and spent, tier, and "
            f"the lots that make up the balance in spending order. {_UNITS} {_ROLES_OTHER}",
            _obj(_on_wallet({"user_id": USER_ID}), ["user_id"]),
            _obj(
                {
                    "user_id": USER_ID,
                    "credits": _n("Credits available now."),
                    "pending": _n("Credits reserved by open holds."),
                    "earned_total": _n("Credits earned in total (awards, revenue share)."),
                    "spent_total": _n("Credits spent in total."),
                    "tier": TIER,
                    "unlimited_overdraft": {"type": "boolean", "description": "Enterprise: usage is never refused."},
                    "lots": {
                        "type": "array",
                        "description": "The parts of the balance, in spending order (allowance, earned, purchased).",
                        "items": _obj(
                            {"kind": _s("allowance, earned or purchased."), "remaining": _n("Credits left."),
                             "expires_at": _date("When it expires; null if never", nullable=True)},
                            ["kind", "remaining", "expires_at"],
                        ),
                    },
                },
                ["credits", "pending", "earned_total", "spent_total"],
                extra=True,
            ),
            ruv_balance,
        ),
        ToolSpec(
            "create_payment_link",
            "Buy credits",
            "A Stripe Checkout link to buy credits for your own account. amount is in USD: at least $10, at most "
            "$10,000, whole cents (50 or 12.34; a fraction of a cent is refused, never rounded). Credits are "
            "granted once the payment succeeds, not when the link is made; credits_amount says how many "
            f"(10 credits per USD by default). The link expires at expires_at. A link above the server's "
            f"confirmation amount is first confirmed by the human (see confirm). {_UNITS}",
            _obj(
                _on_wallet(_charging({"amount": {"type": "number", "minimum": 10, "maximum": 10000,
                                                 "description": "USD to spend: 10 to 10,000, whole cents."}})),
                ["amount"],
            ),
            _obj(
                {
                    "payment_url": _s("Open this to pay."),
                    "expires_at": _date("When the link stops working"),
                    "credits_amount": _n("Credits the payment will add."),
                    "amount": _n("USD charged."),
                    "payment_id": _s("The payment's id (see get_payment_history)."),
                    **IDEMPOTENCY_OUT,
                },
                ["payment_url", "expires_at", "credits_amount", "request_id", "request_id_source"],
                extra=True,
            ),
            create_payment_link,
            mutating=True,
            # A new link per call unless request_id repeats; Stripe is outside the ledger.
            hints=Hints(read_only=False, destructive=False, idempotent=False, open_world=True),
            charge=payment_link_charge,
        ),
        ToolSpec(
            "configure_auto_refill",
            "Configure auto-refill",
            "Enable, change or disable automatic refill of your own account: when your credits fall below "
            "threshold (credits), your saved card is charged amount (USD, $10 to $10,000, whole cents). "
            "Enabling needs threshold and amount, and a card saved by an earlier purchase "
            "(else payment_method_required); disabling needs only enabled: false. Refills are capped per "
            f"month (monthly_cap, USD) and pause after repeated declines (paused_reason). Enabling is a "
            f"recurring charge: the human confirms it first (see confirm). {_UNITS}",
            _obj(
                _on_wallet(_charging({
                    "enabled": {"type": "boolean", "description": "true to enable or change, false to disable."},
                    "threshold": {"type": "number", "exclusiveMinimum": 0,
                                  "description": "Credits: refill when the balance falls below this. Required to enable."},
                    "amount": {"type": "number", "minimum": 10, "maximum": 10000,
                               "description": "USD charged per refill, whole cents. Required to enable."},
                })),
                ["enabled"],
            ),
            _obj(
                {
                    "enabled": {"type": "boolean"},
                    "threshold": _n("Credits below which a refill is charged."),
                    "amount": _n("USD charged per refill."),
                    "next_charge": _s("What triggers the next charge, in words."),
                    "credits_amount": _n("Credits one refill buys."),
                    "state": _s("disabled, idle, in_flight, retry_scheduled, action_required or paused."),
                    "paused_reason": _s("Why it paused (for example auto_refill_failed).", nullable=True),
                    "recovery_url": _s("Fix the card here when state is action_required.", nullable=True),
                    "payment_method": _or_null({"type": "object"}, "The card refills charge."),
                    "monthly_cap": _n("Most USD auto-refill may charge per calendar month (UTC)."),
                    "monthly_used": _n("USD charged by auto-refill this month."),
                    **IDEMPOTENCY_OUT,
                },
                ["enabled", "threshold", "amount", "next_charge", "request_id", "request_id_source"],
                extra=True,
            ),
            configure_auto_refill,
            mutating=True,
            # It replaces the previous settings; the same settings twice change nothing more.
            hints=Hints(read_only=False, destructive=True, idempotent=True, open_world=True),
            charge=auto_refill_charge,
        ),
        ToolSpec(
            "ruv_history",
            "Credit history",
            f"A user's credit transactions, newest first: date, amount (credits, signed: + arrived, - left), "
            f"type and description. limit is 1 to {MAX_LIMIT}; when next_cursor is not null, pass it as cursor "
            f"to read the next (older) page. {_UNITS} {_ROLES_OTHER}",
            _obj(_on_wallet({"user_id": USER_ID, "limit": LIMIT, "cursor": CURSOR}), ["user_id", "limit"]),
            _obj(
                {
                    "user_id": USER_ID,
                    "transactions": {"type": "array", "items": TRANSACTION},
                    "next_cursor": _s("Pass as cursor for the next page; null on the last page.", nullable=True),
                },
                ["transactions", "next_cursor"],
                extra=True,
            ),
            ruv_history,
        ),
        ToolSpec(
            "get_payment_history",
            "Payment history",
            f"Your own payments (credit purchases, auto-refills, subscription invoices), newest first: date, "
            f"amount (USD), status (pending, paid, failed, expired, refunded, partially_refunded, disputed) and "
            f"invoice_url (null when Stripe has none). limit is 1 to {MAX_LIMIT}; pass next_cursor as cursor "
            "for older payments.",
            _obj(_on_wallet({"limit": LIMIT, "cursor": CURSOR}), ["limit"]),
            _obj(
                {
                    "payments": {
                        "type": "array",
                        "items": _obj(
                            {
                                "id": _s("The payment's id."),
                                "date": _date("When it was created"),
                                "amount": _n("USD."),
                                "status": _s("pending, paid, failed, expired, refunded, partially_refunded or disputed."),
                                "invoice_url": _s("Invoice or receipt URL.", nullable=True),
                                "credits": _n("Credits it buys."),
                                "kind": _s("checkout, auto_refill or subscription."),
                            },
                            ["date", "amount", "status", "invoice_url"],
                            extra=True,
                        ),
                    },
                    "next_cursor": _s("Pass as cursor for the next page; null on the last page.", nullable=True),
                },
                ["payments", "next_cursor"],
                extra=True,
            ),
            get_payment_history,
        ),
        ToolSpec(
            "user_upgrade",
            "Upgrade tier",
            "Upgrade a user to pro ($29/month, 1,000 credits/month) or enterprise (set by an admin only; "
            "monthly_credits sets its allowance). Pro is paid through Stripe: unless a saved card pays at once, "
            "the result has status payment_required with a payment_url to pay, completed false and no "
            "effective_date; the tier changes only when the payment succeeds. Changing another user's tier "
            f"needs an admin token. Pro is a monthly charge: the human confirms it first (see confirm). {_UNITS}",
            _obj(
                _on_wallet(_charging({
                    "user_id": USER_ID,
                    "tier": {"type": "string", "enum": list(UPGRADE_TIERS), "description": "pro or enterprise."},
                    "monthly_credits": {"type": "number", "exclusiveMinimum": 0,
                                        "description": "Enterprise only, admin only: the custom monthly allowance in credits."},
                })),
                ["user_id", "tier"],
            ),
            _obj(
                {
                    "user_id": USER_ID,
                    "new_tier": TIER,
                    "monthly_credits": _n("The tier's monthly allowance in credits."),
                    "effective_date": _date("When the tier took effect; null while payment is pending", nullable=True),
                    "status": _s("completed, payment_required (pay at payment_url) or pending (awaiting the first invoice)."),
                    "completed": {"type": "boolean", "description": "Whether new_tier is in force now."},
                    "payment_url": _s("Where to pay when status is payment_required.", nullable=True),
                    **IDEMPOTENCY_OUT,
                },
                ["new_tier", "monthly_credits", "effective_date", "status", "completed", "request_id", "request_id_source"],
                extra=True,
            ),
            user_upgrade,
            mutating=True,
            # It replaces the plan (and starts a subscription); upgrading twice changes nothing more.
            hints=Hints(read_only=False, destructive=True, idempotent=True, open_world=True),
            charge=upgrade_charge,
        ),
        ToolSpec(
            "app_store_earn_ruv",
            "Award earned credits",
            "Award earned credits to a user (challenge completion, app usage, referral). Needs a service or "
            "admin token; nobody can award themselves. amount is in credits (up to 3 decimals); source is "
            "challenge, app_usage or referral; reason is shown in the user's history; with source_ref (the "
            "challenge, app or referral id) each ref pays once per user. Daily limits per user and source apply. "
            "Returns the transaction and the user's new balance.",
            _obj(
                _with_request_id({
                    "user_id": USER_ID,
                    "amount": {"type": "number", "exclusiveMinimum": 0, "description": "Credits to award (up to 3 decimals)."},
                    "reason": {"type": "string", "maxLength": 500, "description": "Shown in history, e.g. 'Challenge completion: Advanced Algorithm'."},
                    "source": {"type": "string", "enum": list(SOURCES), "description": "challenge, app_usage or referral."},
                    "source_ref": {"type": "string", "maxLength": 128, "description": "Optional: the challenge, app or referral id; one award per user, source and ref."},
                }),
                ["user_id", "amount", "reason", "source"],
            ),
            _obj(
                {
                    "user_id": USER_ID,
                    "transaction": TRANSACTION,
                    "credits": _n("The user's balance after the award, in credits."),
                    **IDEMPOTENCY_OUT,
                },
                ["transaction", "credits", "request_id", "request_id_source"],
                extra=True,
            ),
            app_store_earn_ruv,
            mutating=True,
            # Adds credits, replaces nothing; a new award per call unless request_id repeats.
            hints=Hints(read_only=False, destructive=False, idempotent=False, open_world=False),
        ),
        ToolSpec(
            "user_stats",
            "User statistics",
            f"A user's totals: credits earned and spent, apps published, challenges completed and app revenue "
            f"(credits). {_UNITS} {_ROLES_OTHER}",
            _obj(_on_wallet({"user_id": USER_ID}), ["user_id"]),
            _obj(
                {
                    "user_id": USER_ID,
                    "credits_earned": _n("Credits earned in total."),
                    "credits_spent": _n("Credits spent in total."),
                    "apps_published": {"type": "integer", "description": "Apps that earned a revenue share."},
                    "challenges_completed": {"type": "integer", "description": "Challenge awards received."},
                    "app_revenue": _n("Credits earned from revenue shares of published apps."),
                },
                ["credits_earned", "credits_spent", "apps_published", "challenges_completed"],
                extra=True,
            ),
            user_stats,
        ),
    ]
}
