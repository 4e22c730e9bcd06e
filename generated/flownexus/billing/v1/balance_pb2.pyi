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

class BalanceEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BALANCE_EVENT_TYPE_UNSPECIFIED: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_SNAPSHOT: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_TRANSFER: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_AUTO_REFILL_SUCCEEDED: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_AUTO_REFILL_FAILED: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_AUTO_REFILL_PAUSED: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_ACTION_REQUIRED: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_TIER_CHANGED: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_PAYMENT_FAILED: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_BUDGET_WARNING: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_BUDGET_EXHAUSTED: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_BUDGET_RESET: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_BALANCE_LOW: _ClassVar[BalanceEventType]
    BALANCE_EVENT_TYPE_BALANCE_RECOVERED: _ClassVar[BalanceEventType]
BALANCE_EVENT_TYPE_UNSPECIFIED: BalanceEventType
BALANCE_EVENT_TYPE_SNAPSHOT: BalanceEventType
BALANCE_EVENT_TYPE_TRANSFER: BalanceEventType
BALANCE_EVENT_TYPE_AUTO_REFILL_SUCCEEDED: BalanceEventType
BALANCE_EVENT_TYPE_AUTO_REFILL_FAILED: BalanceEventType
BALANCE_EVENT_TYPE_AUTO_REFILL_PAUSED: BalanceEventType
BALANCE_EVENT_TYPE_ACTION_REQUIRED: BalanceEventType
BALANCE_EVENT_TYPE_TIER_CHANGED: BalanceEventType
BALANCE_EVENT_TYPE_PAYMENT_FAILED: BalanceEventType
BALANCE_EVENT_TYPE_BUDGET_WARNING: BalanceEventType
BALANCE_EVENT_TYPE_BUDGET_EXHAUSTED: BalanceEventType
BALANCE_EVENT_TYPE_BUDGET_RESET: BalanceEventType
BALANCE_EVENT_TYPE_BALANCE_LOW: BalanceEventType
BALANCE_EVENT_TYPE_BALANCE_RECOVERED: BalanceEventType

class CheckBalanceRequest(_message.Message):
    __slots__ = ("org_id",)
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    def __init__(self, org_id: _Optional[str] = ...) -> None: ...

class CheckBalanceResponse(_message.Message):
    __slots__ = ("credits_millicredits", "auto_refill", "threshold_millicredits", "tier", "pending_millicredits", "auto_refill_paused_reason")
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    AUTO_REFILL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PENDING_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    AUTO_REFILL_PAUSED_REASON_FIELD_NUMBER: _ClassVar[int]
    credits_millicredits: int
    auto_refill: bool
    threshold_millicredits: int
    tier: _common_pb2.Tier
    pending_millicredits: int
    auto_refill_paused_reason: str
    def __init__(self, credits_millicredits: _Optional[int] = ..., auto_refill: _Optional[bool] = ..., threshold_millicredits: _Optional[int] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., pending_millicredits: _Optional[int] = ..., auto_refill_paused_reason: _Optional[str] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("user_id", "org_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    org_id: str
    def __init__(self, user_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("user_id", "credits_millicredits", "pending_millicredits", "earned_total_millicredits", "spent_total_millicredits", "tier", "lots", "unlimited_overdraft")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    PENDING_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    EARNED_TOTAL_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    SPENT_TOTAL_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    UNLIMITED_OVERDRAFT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    credits_millicredits: int
    pending_millicredits: int
    earned_total_millicredits: int
    spent_total_millicredits: int
    tier: _common_pb2.Tier
    lots: _containers.RepeatedCompositeFieldContainer[_common_pb2.CreditLot]
    unlimited_overdraft: bool
    def __init__(self, user_id: _Optional[str] = ..., credits_millicredits: _Optional[int] = ..., pending_millicredits: _Optional[int] = ..., earned_total_millicredits: _Optional[int] = ..., spent_total_millicredits: _Optional[int] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., lots: _Optional[_Iterable[_Union[_common_pb2.CreditLot, _Mapping]]] = ..., unlimited_overdraft: _Optional[bool] = ...) -> None: ...

class WatchBalanceRequest(_message.Message):
    __slots__ = ("user_id", "org_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    org_id: str
    def __init__(self, user_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class WatchBalanceResponse(_message.Message):
    __slots__ = ("type", "user_id", "credits_millicredits", "pending_millicredits", "transaction", "message", "payment_url", "time", "coalesced", "tier", "key_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    PENDING_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_URL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    type: BalanceEventType
    user_id: str
    credits_millicredits: int
    pending_millicredits: int
    transaction: _common_pb2.Transaction
    message: str
    payment_url: str
    time: _timestamp_pb2.Timestamp
    coalesced: bool
    tier: _common_pb2.Tier
    key_id: str
    def __init__(self, type: _Optional[_Union[BalanceEventType, str]] = ..., user_id: _Optional[str] = ..., credits_millicredits: _Optional[int] = ..., pending_millicredits: _Optional[int] = ..., transaction: _Optional[_Union[_common_pb2.Transaction, _Mapping]] = ..., message: _Optional[str] = ..., payment_url: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., coalesced: _Optional[bool] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., key_id: _Optional[str] = ...) -> None: ...
