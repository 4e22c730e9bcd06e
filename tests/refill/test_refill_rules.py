"""Auto-refill's pure rules, without a server: the retry backoff and the
classification of charges that did not succeed."""

from __future__ import annotations

import random

import pytest

from server.platform.config import Settings
from server.refill import worker as refill_worker
from server.refill.models import Decline
from server.refill.worker import AUTH_CODES, CARD_GONE, NO_RETRY, RefillWorker, classify_decline

BASE, CAP, JITTER = 3600.0, 24 * 3600.0, 0.2


def make_worker(**overrides: float) -> RefillWorker:
    values = {"refill_retry_base_seconds": BASE, "refill_retry_max_seconds": CAP, "refill_retry_jitter": JITTER}
    values.update(overrides)
    return RefillWorker(Settings(**values), None, None)  # type: ignore[arg-type]


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refill_worker.random, "uniform", lambda lo, hi: 0.0)


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(0, BASE), (1, BASE), (2, 2 * BASE), (3, 4 * BASE), (4, 8 * BASE), (5, 16 * BASE)],
)
def test_backoff_doubles_from_the_base(no_jitter: None, attempts: int, expected: float) -> None:
    assert make_worker().backoff_seconds(attempts) == expected


@pytest.mark.parametrize("attempts", [6, 7, 10, 40])
def test_backoff_is_capped(no_jitter: None, attempts: int) -> None:
    # 2^5 * 1 h = 32 h > 24 h: from the sixth attempt on, the cap.
    assert make_worker().backoff_seconds(attempts) == CAP


def test_backoff_jitter_at_its_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    w = make_worker()
    monkeypatch.setattr(refill_worker.random, "uniform", lambda lo, hi: lo)
    assert w.backoff_seconds(2) == pytest.approx(2 * BASE * (1 - JITTER))
    assert w.backoff_seconds(40) == pytest.approx(CAP * (1 - JITTER))
    monkeypatch.setattr(refill_worker.random, "uniform", lambda lo, hi: hi)
    assert w.backoff_seconds(2) == pytest.approx(2 * BASE * (1 + JITTER))
    assert w.backoff_seconds(40) == pytest.approx(CAP * (1 + JITTER))


@pytest.mark.parametrize("attempts", [1, 3, 6, 20])
def test_backoff_jitter_stays_within_bounds(attempts: int) -> None:
    w = make_worker()
    nominal = min(BASE * 2 ** (attempts - 1), CAP)
    random.seed(1234)
    samples = [w.backoff_seconds(attempts) for _ in range(2000)]
    assert all(nominal * (1 - JITTER) <= s <= nominal * (1 + JITTER) for s in samples)
    # Really spread: retries of many accounts never line up.
    assert max(samples) - min(samples) > nominal * JITTER
    assert len(set(samples)) > 1000


def test_backoff_without_jitter_is_exact() -> None:
    w = make_worker(refill_retry_jitter=0.0)
    assert [w.backoff_seconds(n) for n in (1, 2, 3)] == [BASE, 2 * BASE, 4 * BASE]


# ---- decline classification ------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(AUTH_CODES))
def test_authentication_codes_ask_for_the_cardholder(code: str) -> None:
    assert classify_decline("requires_payment_method", code=code) == (Decline.AUTHENTICATION, "authentication_required")
    assert classify_decline("requires_payment_method", decline_code=code)[0] == Decline.AUTHENTICATION
    # Stripe may put the decline code next to the error code: either one asks.
    assert classify_decline("requires_payment_method", code=code, decline_code="generic_decline")[0] == Decline.AUTHENTICATION


def test_requires_action_asks_for_the_cardholder_whatever_the_code() -> None:
    assert classify_decline("requires_action")[0] == Decline.AUTHENTICATION
    assert classify_decline("requires_action", code="card_declined", decline_code="insufficient_funds")[0] == Decline.AUTHENTICATION


@pytest.mark.parametrize("code", sorted(NO_RETRY))
def test_hard_declines_never_retry(code: str) -> None:
    assert classify_decline("requires_payment_method", code="card_declined", decline_code=code) == (Decline.HARD, code)


@pytest.mark.parametrize("code", sorted(CARD_GONE))
def test_an_unusable_card_pauses_at_once(code: str) -> None:
    assert classify_decline("requires_payment_method", code=code) == (Decline.CARD_GONE, code)
    # The error code says the card is gone even when a decline code is given.
    assert classify_decline("requires_payment_method", code=code, decline_code="generic_decline")[0] == Decline.CARD_GONE


@pytest.mark.parametrize("decline_code", ["insufficient_funds", "generic_decline", "do_not_honor", "try_again_later"])
def test_soft_declines_retry_with_the_decline_code(decline_code: str) -> None:
    assert classify_decline("requires_payment_method", code="card_declined", decline_code=decline_code) == (
        Decline.SOFT,
        decline_code,
    )


def test_an_unexplained_failure_is_a_plain_decline() -> None:
    assert classify_decline("requires_payment_method") == (Decline.SOFT, "card_declined")
    assert classify_decline("canceled") == (Decline.SOFT, "card_declined")


def test_the_code_sets_do_not_overlap() -> None:
    assert not AUTH_CODES & NO_RETRY and not AUTH_CODES & CARD_GONE and not NO_RETRY & CARD_GONE
