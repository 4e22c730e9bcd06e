"""A Spend's stored response (its idempotent answer) round-trips exactly, in
today's flat form and in the nested form earlier releases stored."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from server.ledger.model import TransferView, to_json
from server.ledger.ops import SpendResult

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=40)
RESULTS = st.builds(
    SpendResult,
    transaction=st.builds(
        TransferView, id=st.integers(min_value=1, max_value=2**63 - 1), kind=st.sampled_from(["spend", "award"]),
        amount=I64, balance_after=I64, description=TEXT, category=TEXT, ref=TEXT, created_at_us=I64,
        metadata=st.dictionaries(TEXT, TEXT, max_size=4),
    ),
    credits=I64,
)


@given(RESULTS)
def test_a_spend_result_round_trips(result: SpendResult) -> None:
    assert SpendResult.from_bytes(result.to_bytes()) == result


@given(RESULTS)
def test_the_nested_form_of_earlier_releases_still_replays(result: SpendResult) -> None:
    assert SpendResult.from_bytes(to_json(result)) == result
