"""Stateful model test (Hypothesis RuleBasedStateMachine).

An in-memory model of balances, lots (allowance per period, earned), holds
and tiers is checked against the real service after every step: credits,
pending, every lot, tier. Rules: Spend (with and without revenue share, by
the user or by a service for the user), Reserve, Capture, Release, Award,
ReverseTransaction (an admin, once; the revenue share with its charge; refused
after a refund), RefundUsage (the service that charged, all or part, within
the window, never beyond the charge, not after a reversal); corrections put
credits back into the lots they came from, and a lot whose period has ended
expires them at once. Advance the clock by days, move it to just
before, exactly onto or just after the end of the month, expire holds. Holds
live long enough to be captured, released or expired in the next period.
Failures shrink to a minimal sequence of calls.

The service runs in a background thread with its own event loop (one server
for the whole run); the state machine calls it through a synchronous channel.
Each example uses fresh users, so examples do not see each other.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from flownexus.billing.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    balance_pb2,
    balance_pb2_grpc,
    common_pb2,
    earnings_pb2,
    earnings_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from server.platform.clock import ManualClock, month_bounds
from tests.harness import Running, auth, database

FREE = 100_000
SHARE = 70
HOLD_TTL_S = 60
# A hold of this TTL outlives a move onto the next month's first instant.
LONG_TTL_S = 3 * 86_400
START = datetime(2030, 1, 20, 12, 0, tzinfo=UTC)
LOT_RANK = {"allowance": 0, "earned": 1, "purchased": 2}
REFUND_WINDOW_US = 30 * 86_400_000_000
SVC = auth("model-svc", "service")
ADMIN = auth("model-ops", "admin")
KIND_PB = {"allowance": common_pb2.LOT_KIND_ALLOWANCE, "earned": common_pb2.LOT_KIND_EARNED, "purchased": common_pb2.LOT_KIND_PURCHASED}


class Service:
    """A real server on its own event loop thread."""

    def __init__(self, tmp: Path) -> None:
        self.clock = ManualClock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._db = database("sqlite", tmp)
        url = self.run(self._db.__aenter__())
        self.server = Running(url, self.clock, award_rate_per_second=0, award_daily_limit_challenge=0)
        self.run(self.server.start())
        assert self.server.app is not None
        self.channel = grpc.insecure_channel(self.server.target)
        self.balance = balance_pb2_grpc.BalanceServiceStub(self.channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(self.channel)
        self.earnings = earnings_pb2_grpc.EarningsServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def expire_holds(self) -> int:
        assert self.server.app is not None
        return int(self.run(self.server.run_job("expire_holds")))

    def audit(self) -> list[str]:
        assert self.server.app is not None
        return list(self.run(self.server.audit()).problems)

    def close(self) -> None:
        self.channel.close()
        self.run(self.server.stop())
        self.run(self._db.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Wallet:
    balance: int = 0
    pending: int = 0
    lots: dict[tuple[str, int], int] = field(default_factory=dict)  # (kind, expiry) -> remaining
    period_end: int = 0
    tier: str = "free"

    def take(self, amount: int, first: list[tuple[str, int, int]] | None = None) -> list[tuple[str, int, int]]:
        """Draw from lots in spend order: allowance (soonest expiry first), earned,
        purchased; `first` (a hold's own lots, whatever their period) before them."""
        take = max(self.balance, 0) - max(self.balance - amount, 0)
        used = []
        for kind, exp, part in sorted(first or (), key=lambda p: (LOT_RANK[p[0]], p[1] == 0, p[1])):
            part = min(part, take, self.lots.get((kind, exp), 0))
            if part > 0:
                self.lots[(kind, exp)] -= part
                used.append((kind, exp, part))
                take -= part
        for (kind, exp), rem in sorted(self.lots.items(), key=lambda kv: (LOT_RANK[kv[0][0]], kv[0][1] == 0, kv[0][1])):
            if take == 0:
                break
            part = min(take, rem)
            if part > 0:
                self.lots[(kind, exp)] = rem - part
                used.append((kind, exp, part))
                take -= part
        self.balance -= amount
        return used

    def give(
        self, amount: int, kind: str, expiry: int = 0, parts: list[tuple[str, int, int]] | None = None
    ) -> list[tuple[str, int, int]]:
        """Credit the wallet: a debt is repaid first, the rest fills `parts` in
        order (where a transfer's credits came from), then (kind, expiry).
        Returns the lots filled, as the ledger records them."""
        give = max(self.balance + amount, 0) - max(self.balance, 0)
        filled = []
        for k, e, part in parts or [(kind, expiry, give)]:
            part = min(part, give)
            if part > 0:
                self.lots[(k, e)] = self.lots.get((k, e), 0) + part
                filled.append((k, e, part))
                give -= part
        if give > 0:
            self.lots[(kind, expiry)] = self.lots.get((kind, expiry), 0) + give
            filled.append((kind, expiry, give))
        self.balance += amount
        return filled


@dataclass
class Charge:
    """A reversible transfer the model made: Spend, Capture or Award."""

    user: str
    kind: str  # "spend", "capture" or "award"
    amount: int
    at_us: int
    drawn: list[tuple[str, int, int]] = field(default_factory=list)  # lots a charge drew
    filled: list[tuple[str, int, int]] = field(default_factory=list)  # lots an award filled
    share: tuple[str, int, list[tuple[str, int, int]]] | None = None  # publisher, amount, lots filled
    by_service: bool = False
    reversed: bool = False
    refunded: int = 0
    refund_fills: list[tuple[str, int, int]] = field(default_factory=list)
    share_returned: int = 0


_ids = itertools.count()
SERVICE: Service | None = None


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert SERVICE is not None
        self.svc = SERVICE
        run = next(_ids)
        self.users = [f"m{run}a", f"m{run}b"]
        self.wallets: dict[str, Wallet] = {}
        self.holds: dict[str, tuple[str, int, list[tuple[str, int, int]], int]] = {}  # id -> (user, amount, parts, expires)
        self.n = 0
        self.charges: dict[str, Charge] = {}  # transaction id -> what it did (creation order)

    # ---- the model's calendar -------------------------------------------------------

    def now(self) -> int:
        return self.svc.clock.now_us()

    def touch(self, user: str) -> Wallet:
        """What a ledger write does to a wallet first: create it, expire ended
        allowance lots, open the new period with its allowance."""
        w = self.wallets.get(user)
        if w is None:
            w = self.wallets[user] = Wallet()
            w.period_end = month_bounds(self.now())[1]
            w.give(FREE, "allowance", w.period_end)
            return w
        for (kind, exp), rem in list(w.lots.items()):
            if kind == "allowance" and 0 < exp <= self.now() and rem > 0:
                w.lots[(kind, exp)] = 0
                w.balance -= rem
        if w.period_end <= self.now():
            w.period_end = month_bounds(self.now())[1]
            w.give(FREE, "allowance", w.period_end)
        return w

    def rid(self) -> str:
        self.n += 1
        return f"{self.users[0]}-{self.n}"  # unique across examples (the service caller is shared)

    def call(self, fn: Any, req: Any, md: Any) -> tuple[Any, str]:
        try:
            return fn(req, metadata=md, timeout=30), ""
        except grpc.RpcError as exc:
            return None, f"{exc.code().name}:{exc.details()}"  # type: ignore[attr-defined]

    @initialize()
    def open_wallets(self) -> None:
        # Every example starts at the same instant, so that its outcome (and
        # thus what Hypothesis draws next) never depends on earlier examples.
        self.svc.clock.set(START)
        for u in self.users:
            self.svc.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth(u))
            self.touch(u)

    # ---- rules --------------------------------------------------------------------------

    def _spend(self, who: int, amount: int, share: bool, by_service: bool) -> None:
        user, other = self.users[who], self.users[1 - who]
        req = usage_pb2.SpendRequest(
            amount_millicredits=amount, request_id=self.rid(), category="model",
            app_id="app-m" if share else "", publisher_user_id=other if share else "",
            user_id=user if by_service else "",
        )
        resp, err = self.call(self.svc.usage.Spend, req, SVC if by_service else auth(user))
        if share and not by_service:  # only a service or admin vouches for an app's revenue share
            assert err.startswith("PERMISSION_DENIED"), f"a user token paid a revenue share: {err or resp}"
            return
        w = self.touch(user)
        if w.balance < amount:
            assert err.startswith("FAILED_PRECONDITION"), f"spend {amount} of {w.balance} should be refused: {err}"
            return
        assert resp is not None, err
        charge = Charge(user, "spend", amount, self.now(), drawn=w.take(amount), by_service=by_service)
        if share and amount * SHARE // 100 > 0:
            part = amount * SHARE // 100
            charge.share = (other, part, self.touch(other).give(part, "earned"))
        self.charges[resp.transaction.id] = charge
        assert resp.credits_millicredits == w.balance

    @rule(who=st.integers(0, 1), amount=st.integers(1, 60_000), share=st.booleans())
    def spend(self, who: int, amount: int, share: bool) -> None:
        self._spend(who, amount, share, by_service=False)

    @rule(who=st.integers(0, 1), amount=st.integers(1, 60_000), share=st.booleans())
    def service_spend(self, who: int, amount: int, share: bool) -> None:
        """A service charges a user (the principal that may refund it)."""
        self._spend(who, amount, share, by_service=True)

    @rule(who=st.integers(0, 1), amount=st.integers(1, 60_000), ttl=st.sampled_from([HOLD_TTL_S, LONG_TTL_S]))
    def reserve(self, who: int, amount: int, ttl: int) -> None:
        user = self.users[who]
        req = usage_pb2.ReserveRequest(amount_millicredits=amount, request_id=self.rid(), ttl=Duration(seconds=ttl))
        resp, err = self.call(self.svc.usage.Reserve, req, auth(user))
        w = self.touch(user)
        if w.balance < amount:
            assert err.startswith("FAILED_PRECONDITION"), f"reserve {amount} of {w.balance} should be refused: {err}"
            return
        assert resp is not None, err
        parts = w.take(amount)
        w.pending += amount
        self.holds[resp.hold.id] = (user, amount, parts, self.now() + ttl * 1_000_000)

    def _settle(self, hold_id: str, captured: int = 0) -> tuple[str, list[tuple[str, int, int]], Wallet]:
        """The hold goes back into the lots it came from; a capture is then paid
        from exactly those lots, and what is left of an ended period expires.
        Returns the lots the capture drew."""
        user, amount, parts, _ = self.holds.pop(hold_id)
        w = self.wallets[user]
        w.pending -= amount
        w.give(amount, "purchased", 0, parts)
        drawn = w.take(captured, parts) if captured else []
        return user, drawn, w

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), share=st.booleans())
    def capture(self, data: st.DataObject, share: bool) -> None:
        hold_id = data.draw(st.sampled_from(list(self.holds)))  # creation order: replays draw the same
        user, amount = self.holds[hold_id][:2]
        cap = data.draw(st.integers(0, amount))
        other = next(u for u in self.users if u != user)
        req = usage_pb2.CaptureRequest(
            hold_id=hold_id, amount_millicredits=cap, request_id=self.rid(),
            app_id="app-m" if share else "", publisher_user_id=other if share else "",
        )
        if share:  # a user token cannot name a publisher: the hold stays as it was
            _, err = self.call(self.svc.usage.Capture, req, auth(user))
            assert err.startswith("PERMISSION_DENIED"), f"a user token paid a revenue share: {err}"
        # The service that runs the app vouches for the revenue share.
        resp, err = self.call(self.svc.usage.Capture, req, SVC if share else auth(user))
        assert resp is not None, err
        _, drawn, w = self._settle(hold_id, cap)
        charge = Charge(user, "capture", cap, self.now(), drawn=drawn, by_service=share)
        if share and cap * SHARE // 100 > 0:
            part = cap * SHARE // 100
            charge.share = (other, part, self.touch(other).give(part, "earned"))
        if cap:
            self.charges[resp.transaction.id] = charge
        self.touch(user)  # allowance returned into an ended period expires at once
        assert resp.credits_millicredits == w.balance

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        hold_id = data.draw(st.sampled_from(list(self.holds)))  # creation order: replays draw the same
        user = self.holds[hold_id][0]
        resp, err = self.call(self.svc.usage.Release, usage_pb2.ReleaseRequest(hold_id=hold_id, request_id=self.rid()), auth(user))
        assert resp is not None, err
        _, _, w = self._settle(hold_id)
        self.touch(user)
        assert resp.credits_millicredits == w.balance

    @rule(who=st.integers(0, 1), amount=st.integers(1, 50_000))
    def award(self, who: int, amount: int) -> None:
        user = self.users[who]
        rid = self.rid()
        req = earnings_pb2.AwardCreditsRequest(
            user_id=user, amount_millicredits=amount, source=common_pb2.EARNING_SOURCE_CHALLENGE, source_ref=rid, request_id=rid,
        )
        resp, err = self.call(self.svc.earnings.AwardCredits, req, SVC)
        assert resp is not None, err
        w = self.touch(user)
        self.charges[resp.transaction.id] = Charge(user, "award", amount, self.now(), filled=w.give(amount, "earned"))
        assert resp.credits_millicredits == w.balance

    @precondition(lambda self: self.charges)
    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        """An admin reverses a Spend, Capture or Award, at most once; a charge's
        revenue share is reversed with it; a partly refunded charge is refused.
        The credits leave the lots the transfer filled and return to the lots it
        drew (a lot whose period has ended expires them at once)."""
        tid = data.draw(st.sampled_from(list(self.charges)))  # creation order: replays draw the same
        c = self.charges[tid]
        req = admin_pb2.ReverseTransactionRequest(transaction_id=tid, reason="model", request_id=self.rid())
        resp, err = self.call(self.svc.admin.ReverseTransaction, req, ADMIN)
        if c.reversed:
            assert err.startswith("ALREADY_EXISTS"), f"second reversal of #{tid} should be refused: {err}"
            return
        if c.refunded:
            assert err.startswith("FAILED_PRECONDITION"), f"reversal of refunded #{tid} should be refused: {err}"
            return
        assert resp is not None, err
        c.reversed = True
        w = self.touch(c.user)
        if c.kind == "award":
            w.take(c.amount, c.filled)  # may leave a debt
        else:
            w.give(c.amount, "purchased", 0, c.drawn)
            self.touch(c.user)
        if c.share is not None:
            publisher, part, filled = c.share
            self.touch(publisher).take(part, filled)
        assert len(resp.transactions) == (2 if c.share else 1)

    @precondition(lambda self: any(c.kind != "award" for c in self.charges.values()))
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        """The service refunds all or part of a charge it made: the credits go
        back into the lots the charge drew, less what earlier refunds returned
        there, longest-lived first (purchased, earned, then allowance)."""
        charges = [t for t, c in self.charges.items() if c.kind != "award"]
        own = [t for t in charges if self.charges[t].by_service]
        # Mostly its own charges; sometimes one a user made (refused).
        tid = data.draw(st.sampled_from(own if own and data.draw(st.integers(0, 3)) else charges))
        c = self.charges[tid]
        amount = data.draw(st.integers(1, c.amount + 1_000))
        req = usage_pb2.RefundUsageRequest(transaction_id=tid, amount_millicredits=amount, reason="model", request_id=self.rid())
        resp, err = self.call(self.svc.usage.RefundUsage, req, SVC)
        if not c.by_service:
            assert err.startswith("PERMISSION_DENIED"), f"refund of another principal's #{tid}: {err}"
            return
        if self.now() - c.at_us > REFUND_WINDOW_US or c.reversed or c.refunded + amount > c.amount:
            assert err.startswith("FAILED_PRECONDITION"), f"refund {amount} of #{tid} {c} should be refused: {err}"
            return
        assert resp is not None, err
        left: Counter[tuple[str, int]] = Counter()
        for k, e, p in c.drawn:
            left[(k, e)] += p
        for k, e, p in c.refund_fills:
            left[(k, e)] -= p
        lots = sorted(
            ((k, e, p) for (k, e), p in left.items() if p > 0), key=lambda lot: (-LOT_RANK[lot[0]], lot[1] != 0, -lot[1])
        )
        w = self.touch(c.user)
        c.refund_fills += w.give(amount, "purchased", 0, lots)
        c.refunded += amount
        self.touch(c.user)  # what went back into an ended period expires at once
        if c.share is not None:  # the publisher returns the share in proportion, rounded down
            publisher, part, filled = c.share
            due = c.refunded * part // c.amount - c.share_returned
            if due > 0:
                self.touch(publisher).take(due, filled)
                c.share_returned += due
        assert (resp.credits_millicredits, resp.refunded_millicredits) == (w.balance, c.refunded)

    @rule(days=st.integers(1, 40))
    def advance_clock(self, days: int) -> None:
        self.svc.clock.advance(days * 86_400)

    @rule(edge=st.sampled_from([-1, 0, 1]))
    def to_month_end(self, edge: int) -> None:
        """Onto the next month's first instant, or a microsecond before or after it."""
        self.svc.clock.set_us(month_bounds(self.now())[1] + edge)

    @rule()
    def expire_holds(self) -> None:
        self.svc.clock.advance(HOLD_TTL_S + 1)
        self.svc.expire_holds()
        for hold_id, (_, _, _, expires) in list(self.holds.items()):
            if expires <= self.now():
                user = self._settle(hold_id)[0]
                self.touch(user)

    # ---- the comparison after every step -----------------------------------------------

    @invariant()
    def service_agrees(self) -> None:
        for user in self.users:
            w = self.wallets.get(user)
            if w is None:
                continue
            b = self.svc.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth(user))
            if w.period_end <= self.now():
                self.touch(user)  # a read after the period's end rolls the wallet over
            lots = sorted(
                (lot.kind, lot.expires_at.ToMicroseconds() if lot.HasField("expires_at") else 0, lot.remaining_millicredits)
                for lot in b.lots
            )
            model_lots = sorted((KIND_PB[k], e, r) for (k, e), r in w.lots.items() if r > 0)
            assert (b.credits_millicredits, b.pending_millicredits) == (w.balance, w.pending), user
            assert lots == model_lots, f"{user}: service lots {lots} != model {model_lots}"
            assert b.tier == common_pb2.TIER_FREE and w.tier == "free"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    global SERVICE
    SERVICE = Service(tmp_path_factory.mktemp("model"))
    try:
        yield SERVICE
    finally:
        SERVICE.close()
        SERVICE = None


def check_model(service: Service, examples: int, steps: int, *, derandomize: bool) -> None:
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=derandomize,
            database=None,
        ),
    )
    assert service.audit() == []


def test_ledger_matches_model(service: Service) -> None:
    check_model(service, examples=20, steps=20, derandomize=True)


@pytest.mark.slow
def test_ledger_matches_model_soak(service: Service) -> None:
    check_model(service, examples=int(os.environ.get("BILLING_MODEL_EXAMPLES", "100")), steps=50, derandomize=False)


@pytest.mark.parametrize("how", ["release", "expiry"])
async def test_hold_returned_after_its_allowance_expired(server, how: str) -> None:  # type: ignore[no-untyped-def]
    """Found by the model: a hold drawn from the monthly allowance and given
    back (released, or expired by the worker) after the month ended put
    credits back into the ended lot; the next write expired that lot a second
    time under the same transfer key, and every later Spend, Reserve or Award
    of the user failed with UNAVAILABLE."""
    user = f"rollover-{how}"
    r = await server.s.usage.Reserve(
        usage_pb2.ReserveRequest(amount_millicredits=30_000, request_id="h", ttl=Duration(seconds=3600)),
        metadata=auth(user),
    )
    server.clock.advance(40 * 86_400)  # past the month's end (and the hold's)
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="s1"), metadata=auth(user))
    if how == "release":
        await server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=r.hold.id, request_id="rel"), metadata=auth(user))
    else:
        assert (await server.run_job("expire_holds")) == 1
    # The returned allowance expired in the same operation: no stale credits.
    b = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth(user))
    assert b.credits_millicredits == FREE - 1
    assert all(lot.expires_at.ToMicroseconds() > server.clock.now_us() for lot in b.lots if lot.HasField("expires_at"))
    s2 = await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="s2"), metadata=auth(user))
    # the new month's allowance minus two spends: the returned allowance expired
    assert s2.credits_millicredits == FREE - 2
