"""PricingService.usage_from_proto: a request's usage checked for form. The
meter names and dimension values a rate card version prices skip the
regular expressions; a caller's made-up names (well-formed, so refused only
by `quote`) are checked every time and never kept, so they cannot crowd the
others out of the lookups (no I/O: a unit test)."""

from __future__ import annotations

from typing import Any

import pytest
from flownexus.billing.v1 import common_pb2

from server.pricing import card as cards
from server.pricing import service as pricing_service
from server.pricing.models import RateCardVersion, Usage
from server.pricing.service import MAX_CHECKED_KEPT, MAX_KNOWN, PricingError, Snapshot
from tests.pricing.helpers import offline_pricing


def _used(meter: str, quantity: int, **dimensions: str) -> common_pb2.Usage:
    return common_pb2.Usage(meter=meter, quantity=quantity, dimensions=dimensions)


def _counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """The form checks' calls (the regular expressions' path), still checking."""
    calls: dict[str, list[Any]] = {"meter": [], "dimension": []}
    meter, dimension = pricing_service._check_meter, pricing_service._check_dimension

    def check_meter(name: str) -> None:
        calls["meter"].append(name)
        meter(name)

    def check_dimension(pair: tuple[str, str]) -> None:
        calls["dimension"].append(pair)
        dimension(pair)

    monkeypatch.setattr(pricing_service, "_check_meter", check_meter)
    monkeypatch.setattr(pricing_service, "_check_dimension", check_dimension)
    return calls


def test_made_up_names_are_checked_every_time_and_never_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    pricing = offline_pricing()
    calls = _counted(monkeypatch)
    made_up = 2 * max(MAX_KNOWN, MAX_CHECKED_KEPT)
    for i in range(made_up):
        assert pricing.usage_from_proto(_used(f"made.up{i}", 1)) == Usage(f"made.up{i}", 1)
        got = pricing.usage_from_proto(_used("sandbox.seconds", 1, size=f"v{i}"))
        assert got == Usage("sandbox.seconds", 1, (("size", f"v{i}"),))
    assert len(calls["meter"]) == made_up and len(calls["dimension"]) == made_up
    assert pricing._checked == {}  # only usages of meters a version prices are kept
    with pytest.raises(PricingError) as refused:
        pricing.quote(Usage("made.up0", 1), 0)
    assert refused.value.reason == "UNKNOWN_METER"

    # Every other caller's usages still skip the regular expressions, after all those.
    calls["meter"].clear()
    calls["dimension"].clear()
    for _ in range(2):
        assert pricing.usage_from_proto(_used("api.calls", 10)) == Usage("api.calls", 10)
        assert pricing.usage_from_proto(_used("sandbox.seconds", 30, size="small")) == Usage(
            "sandbox.seconds", 30, (("size", "small"),))
    assert calls == {"meter": [], "dimension": []}
    assert list(pricing._checked) == [("api.calls", 10)]
    pricing.usage_from_proto(_used("made.up0", 1))
    assert calls["meter"] == ["made.up0"]


def test_malformed_names_are_refused_as_before() -> None:
    pricing = offline_pricing()
    for usage, reason in (
        (_used("", 1), "UNKNOWN_METER"), (_used("Not A Meter", 1), "UNKNOWN_METER"),
        (_used("api.calls", 0), "INVALID_QUANTITY"),
        (_used("sandbox.seconds", 1, Size="small"), "UNKNOWN_DIMENSION"),
        (_used("sandbox.seconds", 1, size="Small!"), "INVALID_DIMENSION_VALUE"),
    ):
        with pytest.raises(PricingError) as refused:
            pricing.usage_from_proto(usage)
        assert refused.value.reason == reason


def test_the_names_known_are_bounded_newest_versions_first(monkeypatch: pytest.MonkeyPatch) -> None:
    newer = cards.parse_toml('[meters."gpu.hours"]\nunit = "hour"\n'
                             'dimensions = { gpu = ["a100", "h100"] }\nprices = { a100 = 1, h100 = 2 }\n')
    pricing = offline_pricing(RateCardVersion(2, newer, 10, 0, "admin", "v2"))
    assert {"gpu.hours", "api.calls", "sandbox.seconds"} <= pricing._snapshot.meters
    assert {("gpu", "h100"), ("size", "small"), ("model", "base")} <= pricing._snapshot.pairs
    monkeypatch.setattr(pricing_service, "MAX_KNOWN", 2)
    bounded = Snapshot(pricing._snapshot.versions)
    assert bounded.meters == {"gpu.hours", next(iter(pricing._snapshot.versions[0].card.meters))}
    assert bounded.pairs == {("gpu", "a100"), ("gpu", "h100")}
