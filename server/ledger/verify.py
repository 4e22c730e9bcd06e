"""Ledger audit (`python -m server verify`): recompute everything cached from
the immutable transfers and report each discrepancy. Read-only, one snapshot."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, cast, func, inspect, literal, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.db.schema import (
    accounts,
    admin_actions,
    api_keys,
    event_counter,
    events,
    holds,
    key_usage,
    lots,
    org_members,
    rate_card_versions,
    transfer_usage,
    transfers,
    webhook_deliveries,
    webhook_endpoints,
)
from server.ledger import keys
from server.ledger.corrections import record
from server.ledger.model import (
    EARNED_KINDS,
    KEY_USING_KINDS,
    REFUNDABLE_KINDS,
    REVERSIBLE_KINDS,
    SPENT_KINDS,
    SYSTEM_HOLDS,
    Kind,
    wallet_id,
)
from server.platform import ids
from server.platform.clock import window_bounds
from server.pricing.service import (
    InvalidRateCard,
    PricingError,
    Snapshot,
    rounded_up,
    unit_price,
    version_of,
)

WALLET_PREFIX = wallet_id("")
# Scoped keys' counters that start again with each window (key_usage.<window>_start_us, _used).
RESET_WINDOWS = ("hour", "day", "month")

# Debits that may leave a wallet below zero (a reversal of credits already
# spent, an adjustment made with allow_negative).
CLAWBACK_KINDS = (str(Kind.REFUND_CLAWBACK), str(Kind.DISPUTE_CLAWBACK), str(Kind.REVERSAL), str(Kind.ADJUSTMENT),
                  str(Kind.USAGE_REFUND))


@dataclass
class Report:
    checked: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [f"checked {k}: {v}" for k, v in self.checked.items()]
        lines += [f"PROBLEM: {p}" for p in self.problems] or ["ledger OK: no discrepancies"]
        return "\n".join(lines)


async def verify(engine: AsyncEngine) -> Report:
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        return await _verify(conn)


async def _verify(conn: AsyncConnection) -> Report:
    r = Report()
    sums: dict[str, int] = defaultdict(int)
    spent: dict[str, int] = defaultdict(int)
    earned: dict[str, int] = defaultdict(int)
    q = select(
        transfers.c.debit_account, transfers.c.credit_account, transfers.c.kind, func.sum(transfers.c.amount), func.count()
    ).group_by(transfers.c.debit_account, transfers.c.credit_account, transfers.c.kind)
    n_transfers = 0
    clawed: set[str] = set()
    for debit, credit, kind, amount, count in (await conn.execute(q)).all():
        amount = int(amount)
        n_transfers += int(count)
        sums[debit] -= amount
        sums[credit] += amount
        if kind in SPENT_KINDS:
            spent[debit] += amount
        if kind in EARNED_KINDS:
            earned[credit] += amount
        if kind in CLAWBACK_KINDS:
            clawed.add(debit)
    r.checked["transfers"] = n_transfers
    # Reversals and refunds of a charge lower spent_total; of an earning, earned_total.
    orig = transfers.alias("orig")
    fixed = select(transfers.c.debit_account, transfers.c.credit_account, orig.c.kind, func.sum(transfers.c.amount)).join(
        orig, transfers.c.corrects == orig.c.id
    ).group_by(transfers.c.debit_account, transfers.c.credit_account, orig.c.kind)
    for debit, credit, undone, amount in (await conn.execute(fixed)).all():
        if undone in SPENT_KINDS:
            spent[credit] -= int(amount)
        if undone in EARNED_KINDS:
            earned[debit] -= int(amount)

    rows = (await conn.execute(select(accounts))).mappings().all()
    r.checked["accounts"] = len(rows)
    total = 0
    for a in rows:
        aid = a["id"]
        total += a["balance"]
        if a["balance"] != sums.get(aid, 0):
            r.problems.append(f"{aid}: cached balance {a['balance']} != sum of transfers {sums.get(aid, 0)}")
        if a["kind"] == "wallet":
            owner = aid[len(WALLET_PREFIX):]
            if not (aid.startswith(WALLET_PREFIX) and (ids.is_user_id(owner) or ids.is_org_id(owner))):
                # Made before subjects followed the grammar: no operator RPC can name it.
                r.problems.append(f"{aid!r}: the user id breaks the id grammar ({ids.USER_ID_RULE})")
            if a["spent_total"] != spent.get(aid, 0):
                r.problems.append(f"{aid}: spent_total {a['spent_total']} != {spent.get(aid, 0)}")
            if a["earned_total"] != earned.get(aid, 0):
                r.problems.append(f"{aid}: earned_total {a['earned_total']} != {earned.get(aid, 0)}")
            if a["balance"] < 0 and not a["unlimited_overdraft"] and aid not in clawed:
                r.problems.append(f"{aid}: negative balance {a['balance']} without overdraft or clawback")
    missing = set(sums) - {a["id"] for a in rows}
    for aid in sorted(missing):
        r.problems.append(f"{aid}: transfers reference a missing account")
    if total != 0:
        r.problems.append(f"accounts sum to {total}, not 0")

    lot_sums: dict[str, int] = defaultdict(int)
    for aid, remaining in (await conn.execute(select(lots.c.account_id, lots.c.remaining))).all():
        if remaining < 0:
            r.problems.append(f"{aid}: negative lot {remaining}")
        lot_sums[aid] += remaining
    r.checked["lots"] = len(lot_sums)
    for a in rows:
        if a["kind"] == "wallet" and lot_sums.get(a["id"], 0) != max(a["balance"], 0):
            r.problems.append(f"{a['id']}: lots sum {lot_sums.get(a['id'], 0)} != positive balance {max(a['balance'], 0)}")

    pending: dict[str, int] = defaultdict(int)
    hold_rows = (await conn.execute(select(holds))).mappings().all()
    r.checked["holds"] = len(hold_rows)
    hold_transfers = {
        ref: (kind, amount)
        for ref, kind, amount in (
            await conn.execute(select(transfers.c.ref, transfers.c.kind, transfers.c.amount).where(transfers.c.kind == Kind.HOLD))
        ).all()
    }
    active_total = 0
    for h in hold_rows:
        if h["status"] == "active":
            pending[h["account_id"]] += h["amount"]
            active_total += h["amount"]
        t = hold_transfers.get(h["id"])
        if t is None or t[1] != h["amount"]:
            r.problems.append(f"hold {h['id']}: no matching hold transfer")
        if h["captured"] > h["amount"]:
            r.problems.append(f"hold {h['id']}: captured {h['captured']} > held {h['amount']}")
        json.loads(h["lots"])
    orphans = set(hold_transfers) - {h["id"] for h in hold_rows}
    for ref in sorted(orphans):
        r.problems.append(f"hold transfer {ref} has no hold record")
    for a in rows:
        if a["kind"] == "wallet" and a["pending"] != pending.get(a["id"], 0):
            r.problems.append(f"{a['id']}: pending {a['pending']} != active holds {pending.get(a['id'], 0)}")
    if sums.get(SYSTEM_HOLDS, 0) != active_total:
        r.problems.append(f"{SYSTEM_HOLDS}: balance {sums.get(SYSTEM_HOLDS, 0)} != active holds {active_total}")

    await _verify_payments(conn, r)
    await _verify_corrections(conn, r)
    await _verify_key_usage(conn, r)
    await _verify_events(conn, r)
    await _verify_member_usage(conn, r)
    await _verify_rate_cards(conn, r)
    await _verify_priced(conn, r)
    return r


async def _verify_member_usage(conn: AsyncConnection, r: Report) -> None:
    """Each org member's recorded use equals the sum of the transfers on the
    org's wallet recorded with them, window by window as for keys; and every
    such transfer names a member of that org (present or past)."""
    m = org_members.c
    rows = (await conn.execute(select(
        m.org_id, m.user_id, *(m[f"{w}_start_us"] for w in RESET_WINDOWS), *(m[f"{w}_used"] for w in RESET_WINDOWS),
        m.lifetime_used))).all()
    recorded = {(row[0], row[1]): row[2:] for row in rows}
    expected: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (len(RESET_WINDOWS) + 1))
    t = transfers.c
    q = select(t.member_id, t.kind, t.amount, t.created_at_us, t.ledger, t.debit_account, t.credit_account)
    for member, kind, amount, created, ledger, debit, credit in (
        await conn.execute(q.where(t.member_id.is_not(None)))
    ).all():
        uses = kind in KEY_USING_KINDS
        wallet = debit if uses else credit
        org = wallet.removeprefix(WALLET_PREFIX)
        rec = recorded.get((org, member))
        if rec is None or not ids.is_org_id(org):
            r.problems.append(f"transfers on {wallet} name member {member}, who was never a member of it")
            continue
        at = int(json.loads(ledger or "{}").get("budget_at", created))
        signed = int(amount) if uses else -int(amount)
        sums = expected[(org, member)]
        for i, w in enumerate(RESET_WINDOWS):
            if window_bounds(w, at)[0] == rec[i]:
                sums[i] += signed
        sums[-1] += signed
    n = len(RESET_WINDOWS)
    for (org, member), rec in sorted(recorded.items()):
        got = [*rec[n:2 * n], rec[-1]]
        want = expected.get((org, member), [0] * (n + 1))
        for name, used, total in zip((*RESET_WINDOWS, "lifetime"), got, want, strict=True):
            if used != total:
                r.problems.append(f"member {member} of {org}: {name} use {used} != its transfers' sum {total}")
    r.checked["org_members"] = len(recorded)


# Webhook delivery statuses (server/events/models.py DeliveryStatus), and endpoint statuses.
DELIVERY_STATUSES = ("pending", "succeeded", "failed")
ENDPOINT_STATUSES = ("enabled", "disabled")
SHOWN = 20  # problems of one kind listed, at most


async def _verify_events(conn: AsyncConnection, r: Report) -> None:
    """The outbox and its deliveries, by queries that return only what is
    wrong: ids given out by the counter (none above it, so a cursor never
    passes an id that commits later); each wallet event's wallet exists;
    each delivery belongs to an existing endpoint, is named after its
    endpoint and event, has a known status, and matches its event's wallet;
    a pending delivery's event still exists (retention keeps it); a succeeded
    one was attempted. Ids are unique by the primary key, and so strictly
    increasing per wallet. A finished delivery may outlive its event
    (retention prunes by the event's age), and an endpoint may have
    deliveries of events before its creation (RedeliverEvent): neither is checked."""
    has_table = await conn.run_sync(lambda c: inspect(c).has_table("events"))
    if not has_table:
        return
    e, d, w, c = events, webhook_deliveries, webhook_endpoints, event_counter
    top, count = (await conn.execute(select(func.max(e.c.id), func.count()).select_from(e))).one()
    given = (await conn.execute(select(c.c.last_id).where(c.c.id == 1))).scalar()
    if top is not None and (given is None or top > given):
        r.problems.append(f"events: ids up to #{top}, but the event counter gave out {given}")
    if given is not None and given < 0:
        r.problems.append(f"events: the event counter is negative ({given})")
    wallet = literal(WALLET_PREFIX) + e.c.user_id
    q = (select(e.c.id, e.c.user_id).outerjoin(accounts, accounts.c.id == wallet)
         .where(e.c.user_id != "", accounts.c.id.is_(None)).order_by(e.c.id).limit(SHOWN))
    for eid, user in (await conn.execute(q)).all():
        r.problems.append(f"event #{eid}: its wallet {WALLET_PREFIX}{user} does not exist")
    r.checked["events"] = int(count)

    q = (select(w.c.id, w.c.status, w.c.cursor)
         .where(w.c.status.not_in(ENDPOINT_STATUSES) | (w.c.cursor < 0) | (w.c.cursor > (given or 0)))
         .order_by(w.c.id).limit(SHOWN))
    for ep in (await conn.execute(q)).mappings().all():
        r.problems.append(f"webhook endpoint {ep['id']}: status {ep['status']!r}, cursor {ep['cursor']} "
                          f"(events given out: {given})")

    bad: list[tuple[str, Any]] = [
        ("its endpoint does not exist", select(d.c.id).outerjoin(w, w.c.id == d.c.endpoint_id).where(w.c.id.is_(None))),
        ("its id is not <endpoint>/<event>",
         select(d.c.id).where(d.c.id != d.c.endpoint_id + "/" + cast(d.c.event_id, String))),
        (f"its status is not one of {', '.join(DELIVERY_STATUSES)}",
         select(d.c.id).where(d.c.status.not_in(DELIVERY_STATUSES))),
        ("succeeded without an attempt", select(d.c.id).where(d.c.status == "succeeded", d.c.attempts < 1)),
        ("pending, but its event does not exist",
         select(d.c.id).outerjoin(e, e.c.id == d.c.event_id).where(d.c.status == "pending", e.c.id.is_(None))),
        ("its wallet is not its event's", select(d.c.id).join(e, e.c.id == d.c.event_id).where(d.c.user_id != e.c.user_id)),
    ]
    for what, query in bad:
        for (did,) in (await conn.execute(query.order_by(d.c.id).limit(SHOWN))).all():
            r.problems.append(f"webhook delivery {did}: {what}")
    r.checked["webhook_deliveries"] = int((await conn.execute(select(func.count()).select_from(d))).scalar() or 0)


async def _verify_key_usage(conn: AsyncConnection, r: Report) -> None:
    """Each scoped key's recorded use equals the sum of the transfers recorded
    with it: for each window counter, those whose instant (the spend's, or the
    hold's for its settlement) falls in the window the counter is for; for the
    lifetime, all of them. Spends and holds add, the rest gives back."""
    u = key_usage.c
    keys_q = select(api_keys.c.id, *(u[f"{w}_start_us"] for w in RESET_WINDOWS),
                    *(u[f"{w}_used"] for w in RESET_WINDOWS), u.lifetime_used).join_from(
        api_keys, key_usage, u.id == api_keys.c.id, isouter=True)
    recorded = {row[0]: row[1:] for row in (await conn.execute(keys_q)).all()}
    expected: dict[str, list[int]] = defaultdict(lambda: [0] * (len(RESET_WINDOWS) + 1))
    q = select(transfers.c.key_id, transfers.c.kind, transfers.c.amount, transfers.c.created_at_us, transfers.c.ledger)
    for key_id, kind, amount, created, ledger in (await conn.execute(q.where(transfers.c.key_id.is_not(None)))).all():
        rec = recorded.get(key_id)
        if rec is None:
            r.problems.append(f"transfers name key {key_id}, which does not exist")
            continue
        at = int(json.loads(ledger or "{}").get("budget_at", created))
        signed = int(amount) if kind in KEY_USING_KINDS else -int(amount)
        sums = expected[key_id]
        for i, w in enumerate(RESET_WINDOWS):
            if window_bounds(w, at)[0] == rec[i]:
                sums[i] += signed
        sums[-1] += signed
    n = len(RESET_WINDOWS)
    for key_id, rec in sorted(recorded.items()):
        if rec[-1] is None:
            r.problems.append(f"key {key_id} has no usage row")
            continue
        got = [*rec[n:2 * n], rec[-1]]
        want = expected.get(key_id, [0] * (n + 1))
        for name, used, total in zip((*RESET_WINDOWS, "lifetime"), got, want, strict=True):
            if used != total:
                r.problems.append(f"key {key_id}: {name} use {used} != its transfers' sum {total}")
    r.checked["keys"] = len(recorded)


async def _verify_corrections(conn: AsyncConnection, r: Report) -> None:
    """Every reversal mirrors exactly one reversible transfer (at most once);
    refunds never exceed their charge; every admin change has its audit row."""
    t = transfers
    cols = (t.c.id, t.c.key, t.c.kind, t.c.debit_account, t.c.credit_account, t.c.amount, t.c.corrects, t.c.ledger)
    kinds = (str(Kind.REVERSAL), str(Kind.USAGE_REFUND))
    fixes = (await conn.execute(select(*cols).where(t.c.kind.in_(kinds)))).mappings().all()
    targets = {x["corrects"] for x in fixes if x["corrects"] is not None}
    originals = {
        x["id"]: x for x in (await conn.execute(select(*cols).where(t.c.id.in_(targets)))).mappings().all()
    } if targets else {}
    refunded: dict[int, int] = defaultdict(int)
    reversed_ids: set[int] = set()
    for x in fixes:
        orig = originals.get(x["corrects"]) if x["corrects"] is not None else None
        if orig is None:
            r.problems.append(f"{x['kind']} #{x['id']} corrects no transfer")
            continue
        mirrored = x["debit_account"] == orig["credit_account"] and x["credit_account"] == orig["debit_account"]
        if x["kind"] == Kind.REVERSAL:
            reversed_ids.add(orig["id"])
            if orig["kind"] not in REVERSIBLE_KINDS:
                r.problems.append(f"reversal #{x['id']} reverses a {orig['kind']} transfer #{orig['id']}")
            # A grant reversed after part of it expired takes back only the rest.
            expired = sum(p for _, _, p in record(dict(x)).get("expired", []))
            if not mirrored or x["amount"] + expired != orig["amount"] or x["key"] != keys.reversal(orig["id"]):
                r.problems.append(f"reversal #{x['id']} does not mirror #{orig['id']} exactly")
        else:
            refunded[orig["id"]] += x["amount"]
            if orig["kind"] not in (*REFUNDABLE_KINDS, Kind.REVENUE_SHARE) or not mirrored:
                r.problems.append(f"refund #{x['id']} does not refund a charge (#{orig['id']}, {orig['kind']})")
    for cid, total in refunded.items():
        if total > originals[cid]["amount"]:
            r.problems.append(f"charge #{cid}: refunds {total} exceed the charge {originals[cid]['amount']}")
        if cid in reversed_ids:
            r.problems.append(f"charge #{cid} is both refunded and reversed")
    r.checked["corrections"] = len(fixes)

    if not await conn.run_sync(lambda c: inspect(c).has_table("admin_actions")):
        return
    audited: set[int] = set()
    for (transfer_ids,) in (await conn.execute(select(admin_actions.c.transfer_ids))).all():
        audited.update(int(i) for i in json.loads(transfer_ids))
    admin_made = (await conn.execute(
        select(t.c.id).where(t.c.kind.in_((str(Kind.ADJUSTMENT), str(Kind.REVERSAL))))
    )).scalars().all()
    for tid in admin_made:
        if tid not in audited:
            r.problems.append(f"admin transfer #{tid} has no audit row")
    r.checked["admin_actions"] = len(audited)


async def _verify_payments(conn: AsyncConnection, r: Report) -> None:
    """Every paid payment has exactly one grant transfer (once payments exist)."""
    has_table = await conn.run_sync(lambda c: inspect(c).has_table("payments"))
    if not has_table:
        return
    # The grant's key is keys.purchase_grant(payment_id); a subscription
    # invoice's is its allowance, keys.allowance_invoice (its id is `pro_` + the invoice id).
    q = text(
        "SELECT p.id, p.status, (SELECT count(*) FROM transfers t WHERE t.key = "
        "CASE WHEN p.kind = 'subscription' THEN 'allowance:invoice:' || substr(p.id, 5) ELSE 'grant:' || p.id END"
        ") AS grants FROM payments p"
    )
    n = 0
    for pid, status, grants in (await conn.execute(q)).all():
        n += 1
        credited = status in ("paid", "refunded", "partially_refunded", "disputed")
        if credited and grants != 1:
            r.problems.append(f"payment {pid} ({status}) has {grants} grant transfers, expected 1")
        if not credited and grants != 0:
            r.problems.append(f"payment {pid} ({status}) has {grants} grant transfers, expected 0")
    r.checked["payments"] = n


# Transfers that may carry a usage record: a priced Spend, a Reserve's hold, a Capture.
PRICED_KINDS = (str(Kind.SPEND), str(Kind.HOLD), str(Kind.HOLD_CAPTURE))


async def _verify_priced(conn: AsyncConnection, r: Report) -> None:
    """Each transfer priced from usage charged the price of its recorded
    quantity and dimensions under its recorded rate card version, and that
    version was the one in effect at its priced instant (a Spend's or Reserve's
    own instant; a Capture's, its hold's). Recomputed here from the stored
    versions' cards: ceil(quantity * unit price / per units)."""
    if not await conn.run_sync(lambda c: inspect(c).has_table("transfer_usage")):
        return
    stored = []
    for v in (await conn.execute(select(rate_card_versions))).mappings().all():
        try:
            stored.append(version_of(dict(v)))
        except (InvalidRateCard, ValueError):
            continue  # reported by _verify_rate_cards; its transfers show as priced by no version
    snapshot = Snapshot(stored)
    q = select(
        transfer_usage, transfers.c.amount, transfers.c.kind, transfers.c.created_at_us, transfers.c.ref,
    ).join(transfers, transfers.c.id == transfer_usage.c.transfer_id, isouter=True)
    n = 0
    for u in (await conn.execute(q)).mappings().all():
        n += 1
        tid = u["transfer_id"]
        if u["kind"] not in PRICED_KINDS:
            r.problems.append(f"usage of transfer #{tid}: no spend, hold or capture has that id")
            continue
        if u["kind"] != Kind.HOLD_CAPTURE and u["priced_at_us"] != u["created_at_us"]:
            r.problems.append(f"priced transfer #{tid}: priced at {u['priced_at_us']}, applied at {u['created_at_us']}")
        if u["kind"] != Kind.SPEND and u["hold_id"] != u["ref"]:
            r.problems.append(f"priced transfer #{tid}: hold {u['hold_id']} is not its hold {u['ref']}")
        version = snapshot.at(u["priced_at_us"])
        if version is None or version.version != u["version"]:
            r.problems.append(f"priced transfer #{tid}: version {u['version']} was not in effect at its priced instant "
                              f"(version {version.version if version else None} was)")
            continue
        dims = json.loads(u["dimensions"])
        try:
            price, per_units = unit_price(version, u["meter"], dims)
        except PricingError:
            r.problems.append(f"priced transfer #{tid}: version {u['version']} does not price {u['meter']} {dims}")
            continue
        if (u["unit_price"], u["per_units"]) != (price, per_units):
            r.problems.append(f"priced transfer #{tid}: recorded price {u['unit_price']}/{u['per_units']} != version "
                              f"{u['version']}'s {price}/{per_units}")
        expected = rounded_up(u["quantity"], price, per_units)
        if u["amount"] != expected:
            r.problems.append(f"priced transfer #{tid}: amount {u['amount']} != the price of {u['quantity']} "
                              f"{u['meter']} {dims} under version {u['version']} ({expected})")
    r.checked["priced transfers"] = n


async def _verify_rate_cards(conn: AsyncConnection, r: Report) -> None:
    """The rate card versions are numbered 1, 2, 3... with no gap; each card is
    a valid card stored in its canonical form with its hash; each takes effect
    no sooner than it was published (the rate card file's first version excepted,
    effective from the epoch)."""
    from server.pricing.card import (  # the card's own rules, not a copy of them
        InvalidRateCard,
        parse,
    )

    if not await conn.run_sync(lambda c: inspect(c).has_table("rate_card_versions")):
        return
    rows = (await conn.execute(select(rate_card_versions).order_by(rate_card_versions.c.version))).mappings().all()
    for expected, v in enumerate(rows, start=1):
        n = v["version"]
        if n != expected:
            r.problems.append(f"rate card version {n}: expected version {expected} (versions are 1, 2, 3... in order)")
        try:
            card = parse(json.loads(v["card"]))
        except (InvalidRateCard, ValueError) as exc:
            r.problems.append(f"rate card version {n}: not a valid card ({exc})")
            continue
        if card.canonical != v["card"] or card.sha256 != v["card_sha256"]:
            r.problems.append(f"rate card version {n}: card or card_sha256 is not its canonical form and hash")
        first_file = n == 1 and v["effective_at_us"] == 0 and v["published_by"] == "config"
        if v["effective_at_us"] < v["published_at_us"] and not first_file:
            r.problems.append(f"rate card version {n}: effective at {v['effective_at_us']}, before it was "
                              f"published ({v['published_at_us']})")
        if not v["published_by"]:
            r.problems.append(f"rate card version {n}: no publisher")
    r.checked["rate_card_versions"] = len(rows)
