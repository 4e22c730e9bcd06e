"""Client of the flownexus credits billing service: the generated stubs live in
`flownexus.billing.v1`; this package adds a thin async helper and a UsageRecorder that coalesces
single spends into SpendBatch calls."""

from importlib.metadata import PackageNotFoundError, version

from flownexus_billing_client.client import BillingClient
from flownexus_billing_client.errors import (
    AutoRefillFailed,
    BillingError,
    BudgetExceeded,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    NotFound,
    NotImplementedYet,
    PaymentFailed,
    PermissionDenied,
    RequestIdReused,
    TierUpgradeFailed,
    Unauthenticated,
    Unavailable,
    from_item_error,
    from_rpc_error,
)
from flownexus_billing_client.recorder import RecorderStats, SyncUsageRecorder, UsageRecorder
from flownexus_billing_client.service_config import channel_options, service_config

try:
    __version__ = version("flownexus-billing-client")
except PackageNotFoundError:  # used from a checkout
    __version__ = "0.0.0"

__all__ = [
    "AutoRefillFailed",
    "BillingClient",
    "BillingError",
    "BudgetExceeded",
    "InsufficientCredits",
    "InvalidAmount",
    "InvalidArgument",
    "NotFound",
    "NotImplementedYet",
    "PaymentFailed",
    "PermissionDenied",
    "RecorderStats",
    "RequestIdReused",
    "SyncUsageRecorder",
    "TierUpgradeFailed",
    "Unauthenticated",
    "Unavailable",
    "UsageRecorder",
    "__version__",
    "channel_options",
    "from_item_error",
    "from_rpc_error",
    "service_config",
]
