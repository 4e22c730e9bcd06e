"""Auto-refill as the rest of the service sees it: the CheckBalance status, the
stored rows of configs and jobs, and their states (stored as these strings)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict


@dataclass
class RefillStatus:
    """Auto-refill as CheckBalance reports it."""

    enabled: bool = False
    threshold: int = 0
    paused_reason: str = ""


class ConfigState(StrEnum):
    """refill_configs.state; queued/retrying is read from the jobs."""

    ACTIVE = "active"
    PAUSED = "paused"  # see PausedReason
    ACTION_REQUIRED = "action_required"  # the bank asks the cardholder to confirm: recovery_url


class JobStatus(StrEnum):
    """refill_jobs.status."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRY_SCHEDULED = "retry_scheduled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # declined too often: the config is paused (AUTO_REFILL_FAILED)
    SKIPPED = "skipped"  # a gate said no (disabled, above the threshold, monthly cap)
    ACTION_REQUIRED = "action_required"
    PAUSED = "paused"  # the config was paused for another reason


# At most one of these per user (the partial unique index uq_refill_jobs_in_flight).
IN_FLIGHT = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRY_SCHEDULED)
# Ready to be claimed once next_run_at_us is due.
DUE = (JobStatus.QUEUED, JobStatus.RETRY_SCHEDULED)


class PausedReason(StrEnum):
    """refill_configs.paused_reason (also the reason of the errors that say so)."""

    AUTO_REFILL_FAILED = "AUTO_REFILL_FAILED"
    # A disputed payment flagged the account: charging the same cardholder again
    # while they dispute a charge invites more disputes, so refills wait for the
    # dispute to be won.
    ACCOUNT_FLAGGED = "ACCOUNT_FLAGGED"
    PAYMENT_METHOD_REQUIRED = "PAYMENT_METHOD_REQUIRED"
    PAYMENT_METHOD_EXPIRED = "PAYMENT_METHOD_EXPIRED"
    AUTHENTICATION_REQUIRED = "AUTHENTICATION_REQUIRED"


class ViewState(StrEnum):
    """GetAutoRefill's state, derived from the config and the job in flight."""

    DISABLED = "disabled"
    IDLE = "idle"
    IN_FLIGHT = "in_flight"
    RETRY_SCHEDULED = "retry_scheduled"
    ACTION_REQUIRED = "action_required"
    PAUSED = "paused"


class Decline(StrEnum):
    """What a charge that did not succeed means for the refill."""

    AUTHENTICATION = "authentication"  # the bank wants the cardholder: recovery payment link
    CARD_GONE = "card_gone"  # the card itself is unusable: pause at once
    HARD = "hard"  # the issuer says never retry: pause
    SOFT = "soft"  # retry later with backoff, within the attempt and decline caps


class RefillConfigRow(TypedDict):
    user_id: str
    enabled: bool
    threshold: int  # millicredits
    amount_cents: int
    state: str  # ConfigState
    paused_reason: str  # PausedReason or ""
    recovery_url: str
    last_failure_reason: str
    cap_blocked_until_us: int
    created_at_us: int
    updated_at_us: int


class RefillJobRow(TypedDict):
    id: str
    user_id: str
    status: str  # JobStatus
    amount_cents: int
    credits: int  # millicredits
    attempts: int
    payment_id: str | None
    next_run_at_us: int
    lease_until_us: int
    last_error: str
    created_at_us: int
    updated_at_us: int


@dataclass
class Claimed:
    """A job the worker claimed, and the payment (the attempt) it charges."""

    job: RefillJobRow
    payment_id: str
    payment_intent_id: str
