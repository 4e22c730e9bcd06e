"""The pooled-wallet story, black box through the API: an org is created
and its owner buys credits for it (a Checkout paid in the Stripe fake, its
signed webhook); two members spend from it under member budgets, one through a
key made on the org's wallet; one hits their budget while the other goes
on; the owner sees the spend by member and by key, removes a member, and
that member's next spend is refused."""

from __future__ import annotations

import copy

import grpc
from flownexus.billing.v1 import (
    balance_pb2,
    history_pb2,
    keys_pb2,
    keys_pb2_grpc,
    orgs_pb2,
    payments_pb2,
)

from tests.calls import deliver
from tests.harness import Running, auth, expect_error
from tests.orgs.helpers import ADMIN_ROLE, create_org, orgs_stub, remove_member
from tests.orgs.test_member_budgets import DAY, add, budgets
from tests.orgs.test_org_wallet import CREDIT, spend_req
from tests.stripe_fake import StripeFake, event


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


async def test_the_pooled_wallet_story(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server = stripe_server
    # 1. An org is created and its owner buys credits: $100 for the org's wallet, not her own.
    org = await create_org(server, "olga", name="Acme")
    link = await server.s.payments.CreatePaymentLink(payments_pb2.CreatePaymentLinkRequest(
        amount_cents=100_00, request_id="buy-1", org_id=org), metadata=auth("olga"))
    assert link.credits_amount_millicredits == 1_000 * CREDIT
    session = stripe_fake.sessions[link.payment_url.rsplit("/", 1)[-1]]
    await stripe_fake.pay(session["id"])
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    bought = await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(org_id=org), metadata=auth("olga"))
    assert bought.credits_millicredits == 1_000 * CREDIT
    own = await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("olga"))
    assert own.credits_millicredits == 100 * CREDIT  # her Free allowance only
    # 2. Two members under budgets: ann spends herself; bob (an admin) runs an agent on a key of the org.
    await add(server, org, "ann", (DAY, 100 * CREDIT))
    await add(server, org, "bob", (DAY, 300 * CREDIT), role=ADMIN_ROLE)
    keys = keys_pb2_grpc.KeysServiceStub(server.s.channel)
    # A plain member makes no org key.
    await expect_error(keys.CreateKey(keys_pb2.CreateKeyRequest(
        label="x", budgets=budgets((DAY, CREDIT)), request_id="k0", org_id=org), metadata=auth("ann")),
        grpc.StatusCode.PERMISSION_DENIED, "ORG_ROLE_REQUIRED")
    made = await keys.CreateKey(keys_pb2.CreateKeyRequest(
        label="bob's agent", budgets=budgets((DAY, 250 * CREDIT)), request_id="k1", org_id=org), metadata=auth("bob"))
    assert made.key.user_id == org
    agent = bearer(made.secret)
    await server.s.usage.Spend(spend_req(60 * CREDIT, "ann-1", org), metadata=auth("ann"))
    # The key spends from the org's wallet (its own), without naming it.
    await server.s.usage.Spend(spend_req(120 * CREDIT, "bot-1", ""), metadata=agent)
    await server.s.usage.Spend(spend_req(100 * CREDIT, "bot-2", ""), metadata=agent)
    # 3. ann hits her budget; bob's agent goes on until bob's own budget (300) stops it,
    # before its key's (250): a key is held to its budgets and its creating member's.
    info = await expect_error(server.s.usage.Spend(spend_req(50 * CREDIT, "ann-2", org), metadata=auth("ann")),
                              grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")
    assert info.metadata["member"] == "ann"
    await server.s.usage.Spend(spend_req(80 * CREDIT, "bob-1", org), metadata=auth("bob"))
    info = await expect_error(server.s.usage.Spend(spend_req(10 * CREDIT, "bot-3", ""), metadata=agent),
                              grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")
    assert info.metadata["member"] == "bob"
    info = await expect_error(server.s.usage.Spend(spend_req(40 * CREDIT, "bot-4", ""), metadata=agent),
                              grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")
    assert info.metadata.get("key_id") == made.key.id  # 220 + 40 is past the key's 250 first
    # 4. The owner sees the spend by member and by key.
    report = await server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(org_id=org),
                                                      metadata=auth("olga"))
    assert report.total_spent_millicredits == 360 * CREDIT
    assert {m.member_id: m.spent_millicredits for m in report.members} == {"ann": 60 * CREDIT, "bob": 300 * CREDIT}
    assert {k.key_id: k.spent_millicredits for k in report.keys} == {made.key.id: 220 * CREDIT, "": 140 * CREDIT}
    listed = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(
        org_id=org, key_id=made.key.id), metadata=auth("olga"))
    assert {(t.member_id, t.key_id) for t in listed.transactions} == {("bob", made.key.id)}
    # The owner removes ann: her very next spend is refused, her past spend stays hers.
    await remove_member(server, org, "ann", by="olga")
    await expect_error(server.s.usage.Spend(spend_req(CREDIT, "ann-3", org), metadata=auth("ann")),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_ORG_MEMBER")
    again = await server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(org_id=org),
                                                     metadata=auth("olga"))
    assert {m.member_id: m.spent_millicredits for m in again.members}["ann"] == 60 * CREDIT
    left = await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(org_id=org), metadata=auth("olga"))
    assert left.credits_millicredits == (1_000 - 360) * CREDIT
    # The org's keys are the org's: its members list them; removing the key's maker ends the key.
    keys_seen = await keys.ListKeys(keys_pb2.ListKeysRequest(org_id=org), metadata=auth("olga"))
    assert [k.id for k in keys_seen.keys] == [made.key.id]
    await remove_member(server, org, "bob", by="olga")
    await expect_error(server.s.usage.Spend(spend_req(CREDIT, "bot-5", ""), metadata=agent),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_ORG_MEMBER")
    # ...its reads too: the removed maker's key no longer sees the org's wallet.
    await expect_error(server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=agent),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_ORG_MEMBER")
    await expect_error(server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(), metadata=agent),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_ORG_MEMBER")
    members = await orgs_stub(server).ListMembers(orgs_pb2.ListMembersRequest(org_id=org), metadata=auth("olga"))
    assert [m.user_id for m in members.members] == ["olga"]
