import datetime

from flownexus.billing.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HoldStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOLD_STATUS_UNSPECIFIED: _ClassVar[HoldStatus]
    HOLD_STATUS_ACTIVE: _ClassVar[HoldStatus]
    HOLD_STATUS_CAPTURED: _ClassVar[HoldStatus]
    HOLD_STATUS_RELEASED: _ClassVar[HoldStatus]
    HOLD_STATUS_EXPIRED: _ClassVar[HoldStatus]
HOLD_STATUS_UNSPECIFIED: HoldStatus
HOLD_STATUS_ACTIVE: HoldStatus
HOLD_STATUS_CAPTURED: HoldStatus
HOLD_STATUS_RELEASED: HoldStatus
HOLD_STATUS_EXPIRED: HoldStatus

class SpendRequest(_message.Message):
    __slots__ = ("user_id", "amount_millicredits", "request_id", "category", "description", "app_id", "publisher_user_id", "metadata", "key_id", "org_id", "usage")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    amount_millicredits: int
    request_id: str
    category: str
    description: str
    app_id: str
    publisher_user_id: str
    metadata: _containers.ScalarMap[str, str]
    key_id: str
    org_id: str
    usage: _common_pb2.Usage
    def __init__(self, user_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ..., request_id: _Optional[str] = ..., category: _Optional[str] = ..., description: _Optional[str] = ..., app_id: _Optional[str] = ..., publisher_user_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., key_id: _Optional[str] = ..., org_id: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class SpendResponse(_message.Message):
    __slots__ = ("transaction", "credits_millicredits")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    transaction: _common_pb2.Transaction
    credits_millicredits: int
    def __init__(self, transaction: _Optional[_Union[_common_pb2.Transaction, _Mapping]] = ..., credits_millicredits: _Optional[int] = ...) -> None: ...

class SpendBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SpendRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SpendRequest, _Mapping]]] = ...) -> None: ...

class SpendBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SpendBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SpendBatchResult, _Mapping]]] = ...) -> None: ...

class SpendBatchResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: SpendResponse
    error: _common_pb2.BatchItemError
    def __init__(self, response: _Optional[_Union[SpendResponse, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.BatchItemError, _Mapping]] = ...) -> None: ...

class Hold(_message.Message):
    __slots__ = ("id", "user_id", "amount_millicredits", "status", "expires_at", "captured_millicredits", "category", "usage")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    amount_millicredits: int
    status: HoldStatus
    expires_at: _timestamp_pb2.Timestamp
    captured_millicredits: int
    category: str
    usage: _common_pb2.PricedUsage
    def __init__(self, id: _Optional[str] = ..., user_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ..., status: _Optional[_Union[HoldStatus, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., captured_millicredits: _Optional[int] = ..., category: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.PricedUsage, _Mapping]] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("user_id", "amount_millicredits", "request_id", "category", "description", "ttl", "key_id", "org_id", "usage")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    amount_millicredits: int
    request_id: str
    category: str
    description: str
    ttl: _duration_pb2.Duration
    key_id: str
    org_id: str
    usage: _common_pb2.Usage
    def __init__(self, user_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ..., request_id: _Optional[str] = ..., category: _Optional[str] = ..., description: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., key_id: _Optional[str] = ..., org_id: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("hold", "credits_millicredits")
    HOLD_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    credits_millicredits: int
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ..., credits_millicredits: _Optional[int] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("hold_id", "amount_millicredits", "request_id", "description", "app_id", "publisher_user_id", "org_id", "quantity")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    amount_millicredits: int
    request_id: str
    description: str
    app_id: str
    publisher_user_id: str
    org_id: str
    quantity: int
    def __init__(self, hold_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ..., request_id: _Optional[str] = ..., description: _Optional[str] = ..., app_id: _Optional[str] = ..., publisher_user_id: _Optional[str] = ..., org_id: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class CaptureResponse(_message.Message):
    __slots__ = ("hold", "transaction", "credits_millicredits")
    HOLD_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    transaction: _common_pb2.Transaction
    credits_millicredits: int
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ..., transaction: _Optional[_Union[_common_pb2.Transaction, _Mapping]] = ..., credits_millicredits: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("hold_id", "request_id", "org_id")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    request_id: str
    org_id: str
    def __init__(self, hold_id: _Optional[str] = ..., request_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("hold", "credits_millicredits")
    HOLD_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    credits_millicredits: int
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ..., credits_millicredits: _Optional[int] = ...) -> None: ...

class RefundUsageRequest(_message.Message):
    __slots__ = ("transaction_id", "amount_millicredits", "reason", "request_id")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    amount_millicredits: int
    reason: str
    request_id: str
    def __init__(self, transaction_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RefundUsageResponse(_message.Message):
    __slots__ = ("transaction", "credits_millicredits", "refunded_millicredits")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    transaction: _common_pb2.Transaction
    credits_millicredits: int
    refunded_millicredits: int
    def __init__(self, transaction: _Optional[_Union[_common_pb2.Transaction, _Mapping]] = ..., credits_millicredits: _Optional[int] = ..., refunded_millicredits: _Optional[int] = ...) -> None: ...
