import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_FREE: _ClassVar[Tier]
    TIER_PRO: _ClassVar[Tier]
    TIER_ENTERPRISE: _ClassVar[Tier]

class TransactionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSACTION_TYPE_UNSPECIFIED: _ClassVar[TransactionType]
    TRANSACTION_TYPE_PURCHASE: _ClassVar[TransactionType]
    TRANSACTION_TYPE_SPEND: _ClassVar[TransactionType]
    TRANSACTION_TYPE_HOLD: _ClassVar[TransactionType]
    TRANSACTION_TYPE_HOLD_CAPTURE: _ClassVar[TransactionType]
    TRANSACTION_TYPE_HOLD_RELEASE: _ClassVar[TransactionType]
    TRANSACTION_TYPE_AWARD: _ClassVar[TransactionType]
    TRANSACTION_TYPE_ALLOWANCE_GRANT: _ClassVar[TransactionType]
    TRANSACTION_TYPE_ALLOWANCE_EXPIRY: _ClassVar[TransactionType]
    TRANSACTION_TYPE_REFUND_CLAWBACK: _ClassVar[TransactionType]
    TRANSACTION_TYPE_DISPUTE_CLAWBACK: _ClassVar[TransactionType]
    TRANSACTION_TYPE_DISPUTE_RESTORE: _ClassVar[TransactionType]
    TRANSACTION_TYPE_AUTO_REFILL: _ClassVar[TransactionType]
    TRANSACTION_TYPE_REVENUE_SHARE: _ClassVar[TransactionType]
    TRANSACTION_TYPE_ADJUSTMENT: _ClassVar[TransactionType]
    TRANSACTION_TYPE_REVERSAL: _ClassVar[TransactionType]
    TRANSACTION_TYPE_USAGE_REFUND: _ClassVar[TransactionType]

class EarningSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EARNING_SOURCE_UNSPECIFIED: _ClassVar[EarningSource]
    EARNING_SOURCE_CHALLENGE: _ClassVar[EarningSource]
    EARNING_SOURCE_APP_USAGE: _ClassVar[EarningSource]
    EARNING_SOURCE_REFERRAL: _ClassVar[EarningSource]

class LotKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOT_KIND_UNSPECIFIED: _ClassVar[LotKind]
    LOT_KIND_ALLOWANCE: _ClassVar[LotKind]
    LOT_KIND_EARNED: _ClassVar[LotKind]
    LOT_KIND_PURCHASED: _ClassVar[LotKind]
TIER_UNSPECIFIED: Tier
TIER_FREE: Tier
TIER_PRO: Tier
TIER_ENTERPRISE: Tier
TRANSACTION_TYPE_UNSPECIFIED: TransactionType
TRANSACTION_TYPE_PURCHASE: TransactionType
TRANSACTION_TYPE_SPEND: TransactionType
TRANSACTION_TYPE_HOLD: TransactionType
TRANSACTION_TYPE_HOLD_CAPTURE: TransactionType
TRANSACTION_TYPE_HOLD_RELEASE: TransactionType
TRANSACTION_TYPE_AWARD: TransactionType
TRANSACTION_TYPE_ALLOWANCE_GRANT: TransactionType
TRANSACTION_TYPE_ALLOWANCE_EXPIRY: TransactionType
TRANSACTION_TYPE_REFUND_CLAWBACK: TransactionType
TRANSACTION_TYPE_DISPUTE_CLAWBACK: TransactionType
TRANSACTION_TYPE_DISPUTE_RESTORE: TransactionType
TRANSACTION_TYPE_AUTO_REFILL: TransactionType
TRANSACTION_TYPE_REVENUE_SHARE: TransactionType
TRANSACTION_TYPE_ADJUSTMENT: TransactionType
TRANSACTION_TYPE_REVERSAL: TransactionType
TRANSACTION_TYPE_USAGE_REFUND: TransactionType
EARNING_SOURCE_UNSPECIFIED: EarningSource
EARNING_SOURCE_CHALLENGE: EarningSource
EARNING_SOURCE_APP_USAGE: EarningSource
EARNING_SOURCE_REFERRAL: EarningSource
LOT_KIND_UNSPECIFIED: LotKind
LOT_KIND_ALLOWANCE: LotKind
LOT_KIND_EARNED: LotKind
LOT_KIND_PURCHASED: LotKind

class Transaction(_message.Message):
    __slots__ = ("id", "date", "amount_millicredits", "type", "description", "balance_after_millicredits", "category", "metadata", "key_id", "member_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    date: _timestamp_pb2.Timestamp
    amount_millicredits: int
    type: TransactionType
    description: str
    balance_after_millicredits: int
    category: str
    metadata: _containers.ScalarMap[str, str]
    key_id: str
    member_id: str
    def __init__(self, id: _Optional[str] = ..., date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., amount_millicredits: _Optional[int] = ..., type: _Optional[_Union[TransactionType, str]] = ..., description: _Optional[str] = ..., balance_after_millicredits: _Optional[int] = ..., category: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., key_id: _Optional[str] = ..., member_id: _Optional[str] = ...) -> None: ...

class CreditLot(_message.Message):
    __slots__ = ("id", "kind", "remaining_millicredits", "expires_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: LotKind
    remaining_millicredits: int
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[LotKind, str]] = ..., remaining_millicredits: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BatchItemError(_message.Message):
    __slots__ = ("code", "message", "reason", "domain", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    domain: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., domain: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("meter", "quantity", "dimensions")
    class DimensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METER_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    meter: str
    quantity: int
    dimensions: _containers.ScalarMap[str, str]
    def __init__(self, meter: _Optional[str] = ..., quantity: _Optional[int] = ..., dimensions: _Optional[_Mapping[str, str]] = ...) -> None: ...
