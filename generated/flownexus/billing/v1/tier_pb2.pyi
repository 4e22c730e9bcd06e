import datetime

from flownexus.billing.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscriptionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBSCRIPTION_STATUS_UNSPECIFIED: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_NONE: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_INCOMPLETE: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_ACTIVE: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_PAST_DUE: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_CANCELED: _ClassVar[SubscriptionStatus]

class UpgradeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPGRADE_STATUS_UNSPECIFIED: _ClassVar[UpgradeStatus]
    UPGRADE_STATUS_COMPLETED: _ClassVar[UpgradeStatus]
    UPGRADE_STATUS_PAYMENT_REQUIRED: _ClassVar[UpgradeStatus]
    UPGRADE_STATUS_PENDING: _ClassVar[UpgradeStatus]
SUBSCRIPTION_STATUS_UNSPECIFIED: SubscriptionStatus
SUBSCRIPTION_STATUS_NONE: SubscriptionStatus
SUBSCRIPTION_STATUS_INCOMPLETE: SubscriptionStatus
SUBSCRIPTION_STATUS_ACTIVE: SubscriptionStatus
SUBSCRIPTION_STATUS_PAST_DUE: SubscriptionStatus
SUBSCRIPTION_STATUS_CANCELED: SubscriptionStatus
UPGRADE_STATUS_UNSPECIFIED: UpgradeStatus
UPGRADE_STATUS_COMPLETED: UpgradeStatus
UPGRADE_STATUS_PAYMENT_REQUIRED: UpgradeStatus
UPGRADE_STATUS_PENDING: UpgradeStatus

class TierInfo(_message.Message):
    __slots__ = ("tier", "display_name", "monthly_credits_millicredits", "price_cents", "custom_price", "unlimited", "features")
    TIER_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_PRICE_FIELD_NUMBER: _ClassVar[int]
    UNLIMITED_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    display_name: str
    monthly_credits_millicredits: int
    price_cents: int
    custom_price: bool
    unlimited: bool
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., display_name: _Optional[str] = ..., monthly_credits_millicredits: _Optional[int] = ..., price_cents: _Optional[int] = ..., custom_price: _Optional[bool] = ..., unlimited: _Optional[bool] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class ListTiersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTiersResponse(_message.Message):
    __slots__ = ("tiers",)
    TIERS_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[TierInfo]
    def __init__(self, tiers: _Optional[_Iterable[_Union[TierInfo, _Mapping]]] = ...) -> None: ...

class GetTierRequest(_message.Message):
    __slots__ = ("user_id", "org_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    org_id: str
    def __init__(self, user_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class GetTierResponse(_message.Message):
    __slots__ = ("tier", "period_start", "period_end", "monthly_credits_millicredits", "allowance_remaining_millicredits", "pending_tier", "pending_change_at", "subscription_status", "payment_url")
    TIER_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    ALLOWANCE_REMAINING_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    PENDING_TIER_FIELD_NUMBER: _ClassVar[int]
    PENDING_CHANGE_AT_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_STATUS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_URL_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    monthly_credits_millicredits: int
    allowance_remaining_millicredits: int
    pending_tier: _common_pb2.Tier
    pending_change_at: _timestamp_pb2.Timestamp
    subscription_status: SubscriptionStatus
    payment_url: str
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., monthly_credits_millicredits: _Optional[int] = ..., allowance_remaining_millicredits: _Optional[int] = ..., pending_tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., pending_change_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., subscription_status: _Optional[_Union[SubscriptionStatus, str]] = ..., payment_url: _Optional[str] = ...) -> None: ...

class UpgradeTierRequest(_message.Message):
    __slots__ = ("user_id", "tier", "request_id", "monthly_credits_millicredits", "org_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    tier: _common_pb2.Tier
    request_id: str
    monthly_credits_millicredits: int
    org_id: str
    def __init__(self, user_id: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., request_id: _Optional[str] = ..., monthly_credits_millicredits: _Optional[int] = ..., org_id: _Optional[str] = ...) -> None: ...

class UpgradeTierResponse(_message.Message):
    __slots__ = ("new_tier", "monthly_credits_millicredits", "effective_date", "status", "payment_url")
    NEW_TIER_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_DATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_URL_FIELD_NUMBER: _ClassVar[int]
    new_tier: _common_pb2.Tier
    monthly_credits_millicredits: int
    effective_date: _timestamp_pb2.Timestamp
    status: UpgradeStatus
    payment_url: str
    def __init__(self, new_tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., monthly_credits_millicredits: _Optional[int] = ..., effective_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[UpgradeStatus, str]] = ..., payment_url: _Optional[str] = ...) -> None: ...

class DowngradeTierRequest(_message.Message):
    __slots__ = ("user_id", "tier", "request_id", "org_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    tier: _common_pb2.Tier
    request_id: str
    org_id: str
    def __init__(self, user_id: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., request_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class DowngradeTierResponse(_message.Message):
    __slots__ = ("new_tier", "effective_date", "monthly_credits_millicredits")
    NEW_TIER_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_DATE_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    new_tier: _common_pb2.Tier
    effective_date: _timestamp_pb2.Timestamp
    monthly_credits_millicredits: int
    def __init__(self, new_tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., effective_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., monthly_credits_millicredits: _Optional[int] = ...) -> None: ...
