"""Keys cannot collide: not a caller's request with another's, not a request
with a key derived from one (revenue share, settlement), on both databases."""

from __future__ import annotations

import asyncio

import grpc
from hypothesis import given
from hypothesis import strategies as st

from server.ledger import keys
from tests.calls import FREE, credits, spend
from tests.harness import auth, expect_error

PARTS = st.lists(st.text(alphabet=":|/#0123456789abc", max_size=12), min_size=1, max_size=4)


@given(PARTS, PARTS, st.sampled_from(["idem", "request", "share"]), st.sampled_from(["idem", "request", "share"]))
def test_different_parts_never_make_the_same_key(a: list[str], b: list[str], tag_a: str, tag_b: str) -> None:
    if (tag_a, a) != (tag_b, b):
        assert keys.encode(tag_a, *a) != keys.encode(tag_b, *b)


def test_derived_keys_never_equal_a_request_key() -> None:
    spent = keys.request_transfer(keys.idempotency("user", "V", "Spend", "a"))
    mimic = keys.request_transfer(keys.idempotency("user", "V", "Spend", "a:share"))
    assert keys.revenue_share(spent) != mimic
    assert keys.hold_settlement(spent) != keys.request_transfer(keys.idempotency("user", "V", "Spend", "a:release"))


async def test_subjects_and_request_ids_with_colons_stay_apart(server) -> None:
    # The same string once split as subject `V:Spend:job` + request `42`, once
    # as subject `V` + request `job:Spend:42`: such a subject is refused at
    # authentication (subjects follow the grammar of user ids), and the
    # request ids stay apart from each other.
    await expect_error(
        server.s.usage.Spend(_req(10_000, "42"), metadata=auth("V:Spend:job")),
        grpc.StatusCode.UNAUTHENTICATED, "INVALID_SUBJECT",
    )
    first = await server.s.usage.Spend(_req(10_000, "job:Spend:42"), metadata=auth("V"))
    second = await server.s.usage.Spend(_req(10_000, "job:Spend"), metadata=auth("V"))
    assert first.transaction.id != second.transaction.id
    assert await credits(server, "V") == FREE - 20_000


async def test_a_request_that_mimics_a_derived_key_commits_with_everyone_else(server) -> None:
    """Spend `a` pays a revenue share; Spend `a:share` used to reuse its key, which
    failed the whole batch at flush, three retries and then one by one. Now it is
    an ordinary request, and its batch neighbours commit on the first try."""
    svc = auth("app-store", "service")
    await server.s.usage.Spend(_req(1_000, "a", user_id="buyer", app_id="app-1", publisher_user_id="pub"), metadata=svc)
    stats = server.writer_stats
    retries, rereads = stats.retries, stats.rereads
    honest = [spend(server, f"honest-{i}", 1_000, f"h{i}") for i in range(32)]
    attacks = [
        server.s.usage.Spend(_req(1, f"a:share{'' if n == 0 else n}", user_id="buyer"), metadata=svc) for n in range(8)
    ]
    results = await asyncio.gather(*honest, *attacks)
    assert all(r.credits_millicredits == FREE - 1_000 for r in results[:32])
    assert len({r.transaction.id for r in results}) == 40
    assert (stats.retries, stats.rereads) == (retries, rereads)  # no batch ran twice
    assert await credits(server, "buyer") == FREE - 1_000 - 8


def _req(amount: int, request_id: str, **fields: str):  # type: ignore[no-untyped-def]
    from flownexus.billing.v1 import usage_pb2

    return usage_pb2.SpendRequest(amount_millicredits=amount, request_id=request_id, **fields)
