"""An open WatchBalance stream on an org's wallet ends when its member is
removed: at the removal's commit, with PERMISSION_DENIED NOT_ORG_MEMBER,
whether the member watches with their own token or a service watches for
them; the other members' streams go on and are told nothing of it."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import balance_pb2

from tests.balance.test_scaleout import replicas  # noqa: F401 (the fixture)
from tests.harness import Running, auth, expect_error
from tests.orgs.helpers import add_member, create_org, remove_member
from tests.orgs.test_org_wallet import CREDIT, fund_org, spend_req

PD = grpc.StatusCode.PERMISSION_DENIED


async def test_a_removed_members_stream_ends(server: Running) -> None:
    org = await create_org(server, "olga")
    for user in ("mia", "ann"):
        await add_member(server, org, user, by="olga")
    await fund_org(server, org, 10 * CREDIT)

    def watch(metadata: tuple[tuple[str, str], ...], user_id: str = "") -> grpc.aio.UnaryStreamCall:
        return server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(org_id=org, user_id=user_id),
                                             metadata=metadata, timeout=10)

    streams = {"mia": watch(auth("mia")), "service-for-mia": watch(auth("platform", "service"), "mia"),
               "ann": watch(auth("ann")), "olga": watch(auth("olga"))}
    for call in streams.values():
        assert (await call.read()).credits_millicredits == 10 * CREDIT  # the snapshot
    await remove_member(server, org, "mia", by="olga")
    for name in ("mia", "service-for-mia"):
        info = await expect_error(streams[name].read(), PD, "NOT_ORG_MEMBER")
        assert info.metadata["org_id"] == org
    # The others are told of the next change, not of the removal.
    await server.s.usage.Spend(spend_req(3 * CREDIT, "w1", org), metadata=auth("ann"))
    for name in ("ann", "olga"):
        change = await streams[name].read()
        assert change.type == balance_pb2.BALANCE_EVENT_TYPE_TRANSFER and change.credits_millicredits == 7 * CREDIT
        streams[name].cancel()
    # Leaving ends one's own stream too.
    again = watch(auth("ann"))
    await again.read()
    await remove_member(server, org, "ann", by="ann")
    await expect_error(again.read(), PD, "NOT_ORG_MEMBER")


async def test_a_removal_on_one_replica_ends_the_stream_on_another(
    replicas: tuple[Running, Running],  # noqa: F811
) -> None:
    """The removal crosses replicas with the member named (LISTEN/NOTIFY, PostgreSQL)."""
    a, b = replicas
    org = await create_org(a, "olga")
    await add_member(a, org, "mia", by="olga")
    call = b.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(org_id=org), metadata=auth("mia"), timeout=10)
    await call.read()
    await remove_member(a, org, "mia", by="olga")
    await expect_error(call.read(), PD, "NOT_ORG_MEMBER")
