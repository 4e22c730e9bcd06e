"""The payment rules that need no server: the status after clawbacks and
what is still credited."""

from __future__ import annotations

import pytest

from server.payments.models import PaymentStatus
from server.payments.repository import new_payment
from server.payments.webhooks import after_clawback_status, still_credited


def paid(**values: object):  # type: ignore[no-untyped-def]
    p = new_payment("pay_1", "u", "checkout", 2_000, 200_000, 0)
    p.update(status=PaymentStatus.PAID, **values)  # type: ignore[typeddict-item]
    return p


@pytest.mark.parametrize(
    ("values", "status"),
    [
        ({}, PaymentStatus.PAID),
        ({"refunded_cents": 1}, PaymentStatus.PARTIALLY_REFUNDED),
        ({"refunded_cents": 1_999}, PaymentStatus.PARTIALLY_REFUNDED),
        ({"refunded_cents": 2_000}, PaymentStatus.REFUNDED),
        # A dispute that took credits back wins over any refund.
        ({"refunded_cents": 2_000, "dispute_id": "dp_1", "dispute_clawed": 1}, PaymentStatus.DISPUTED),
        # A dispute that took nothing (already refunded) leaves the refund's status.
        ({"refunded_cents": 500, "dispute_id": "dp_1", "dispute_clawed": 0}, PaymentStatus.PARTIALLY_REFUNDED),
    ],
)
def test_status_after_clawbacks(values, status) -> None:  # type: ignore[no-untyped-def]
    assert after_clawback_status(paid(**values)) == status


def test_still_credited_never_goes_below_zero() -> None:
    assert still_credited(paid()) == 200_000
    assert still_credited(paid(refund_clawed=50_000, dispute_clawed=30_000)) == 120_000
    assert still_credited(paid(refund_clawed=150_000, dispute_clawed=100_000)) == 0
