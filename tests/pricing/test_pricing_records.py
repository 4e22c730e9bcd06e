"""PricingService.priced: what the ledger records of a usage priced at a
batch's instant, made once per distinct usage of that instant and shared by
the spends that give it, always with the version in effect at the instant
and the snapshot of the moment (no I/O: a unit test)."""

from __future__ import annotations

from server.pricing import card as cards
from server.pricing.models import RateCardVersion, Usage
from server.pricing.service import DEFAULT_RATE_CARD, Snapshot
from tests.pricing.helpers import offline_pricing as _service

CHANGE_AT = 1_800_000_000_000_000


def _dearer() -> RateCardVersion:
    text = DEFAULT_RATE_CARD.read_text().replace('per_units = 1000\nprice = 100', 'per_units = 1000\nprice = 300')
    return RateCardVersion(2, cards.parse_toml(text), CHANGE_AT, 0, "admin", "v2")


def test_equal_usages_of_one_instant_share_one_record_priced_as_quoted() -> None:
    pricing = _service()
    first = pricing.priced(Usage("api.calls", 10), CHANGE_AT)
    assert pricing.priced(Usage("api.calls", 10), CHANGE_AT) is first
    quote = pricing.quote(Usage("api.calls", 10), CHANGE_AT)
    assert (first.amount, first.version, first.unit_price, first.per_units) == (
        quote.amount, quote.version, quote.unit_price, quote.per_units)
    assert (first.meter, first.quantity, first.dimensions, first.priced_at_us) == ("api.calls", 10, {}, CHANGE_AT)
    other = pricing.priced(Usage("api.calls", 20), CHANGE_AT)
    assert other is not first and other.amount == 2


def test_each_instant_is_priced_with_its_own_version() -> None:
    pricing = _service(_dearer())
    before = pricing.priced(Usage("api.calls", 1000), CHANGE_AT - 1)
    at = pricing.priced(Usage("api.calls", 1000), CHANGE_AT)
    assert (before.version, before.amount) == (1, 100)
    assert (at.version, at.amount) == (2, 300)
    assert pricing.priced(Usage("api.calls", 1000), CHANGE_AT - 1).version == 1


def test_a_new_snapshot_reprices_the_same_instant() -> None:
    pricing = _service()
    assert pricing.priced(Usage("api.calls", 1000), CHANGE_AT).amount == 100
    pricing._snapshot = Snapshot([*pricing._snapshot.versions, _dearer()])  # what a refresh does
    again = pricing.priced(Usage("api.calls", 1000), CHANGE_AT)
    assert (again.version, again.amount) == (2, 300)
