import datetime

from flownexus.billing.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListTransactionsRequest(_message.Message):
    __slots__ = ("user_id", "page_size", "page_token", "types", "start_time", "end_time", "key_id", "org_id", "member_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    page_size: int
    page_token: str
    types: _containers.RepeatedScalarFieldContainer[_common_pb2.TransactionType]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    key_id: str
    org_id: str
    member_id: str
    def __init__(self, user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., types: _Optional[_Iterable[_Union[_common_pb2.TransactionType, str]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., org_id: _Optional[str] = ..., member_id: _Optional[str] = ...) -> None: ...

class ListTransactionsResponse(_message.Message):
    __slots__ = ("transactions", "next_page_token")
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Transaction]
    next_page_token: str
    def __init__(self, transactions: _Optional[_Iterable[_Union[_common_pb2.Transaction, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetSpendingReportRequest(_message.Message):
    __slots__ = ("user_id", "start_time", "end_time", "key_id", "org_id", "member_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    key_id: str
    org_id: str
    member_id: str
    def __init__(self, user_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., org_id: _Optional[str] = ..., member_id: _Optional[str] = ...) -> None: ...

class KeySpend(_message.Message):
    __slots__ = ("key_id", "spent_millicredits", "operations")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SPENT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    spent_millicredits: int
    operations: int
    def __init__(self, key_id: _Optional[str] = ..., spent_millicredits: _Optional[int] = ..., operations: _Optional[int] = ...) -> None: ...

class CategorySpend(_message.Message):
    __slots__ = ("category", "spent_millicredits", "operations")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SPENT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    category: str
    spent_millicredits: int
    operations: int
    def __init__(self, category: _Optional[str] = ..., spent_millicredits: _Optional[int] = ..., operations: _Optional[int] = ...) -> None: ...

class GetSpendingReportResponse(_message.Message):
    __slots__ = ("categories", "total_spent_millicredits", "burn_rate_millicredits_per_day", "credits_millicredits", "days_left", "start_time", "end_time", "keys", "members", "meters")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SPENT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    BURN_RATE_MILLICREDITS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    DAYS_LEFT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    METERS_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedCompositeFieldContainer[CategorySpend]
    total_spent_millicredits: int
    burn_rate_millicredits_per_day: int
    credits_millicredits: int
    days_left: float
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    keys: _containers.RepeatedCompositeFieldContainer[KeySpend]
    members: _containers.RepeatedCompositeFieldContainer[MemberSpend]
    meters: _containers.RepeatedCompositeFieldContainer[MeterSpend]
    def __init__(self, categories: _Optional[_Iterable[_Union[CategorySpend, _Mapping]]] = ..., total_spent_millicredits: _Optional[int] = ..., burn_rate_millicredits_per_day: _Optional[int] = ..., credits_millicredits: _Optional[int] = ..., days_left: _Optional[float] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., keys: _Optional[_Iterable[_Union[KeySpend, _Mapping]]] = ..., members: _Optional[_Iterable[_Union[MemberSpend, _Mapping]]] = ..., meters: _Optional[_Iterable[_Union[MeterSpend, _Mapping]]] = ...) -> None: ...

class Ratio(_message.Message):
    __slots__ = ("numerator", "denominator")
    NUMERATOR_FIELD_NUMBER: _ClassVar[int]
    DENOMINATOR_FIELD_NUMBER: _ClassVar[int]
    numerator: int
    denominator: int
    def __init__(self, numerator: _Optional[int] = ..., denominator: _Optional[int] = ...) -> None: ...

class MeterSpend(_message.Message):
    __slots__ = ("meter", "quantity", "spent_millicredits", "operations", "average_millicredits_per_unit", "average_millicredits_per_operation", "dimensions")
    METER_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    SPENT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_MILLICREDITS_PER_UNIT_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_MILLICREDITS_PER_OPERATION_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    meter: str
    quantity: int
    spent_millicredits: int
    operations: int
    average_millicredits_per_unit: Ratio
    average_millicredits_per_operation: Ratio
    dimensions: _containers.RepeatedCompositeFieldContainer[DimensionSpend]
    def __init__(self, meter: _Optional[str] = ..., quantity: _Optional[int] = ..., spent_millicredits: _Optional[int] = ..., operations: _Optional[int] = ..., average_millicredits_per_unit: _Optional[_Union[Ratio, _Mapping]] = ..., average_millicredits_per_operation: _Optional[_Union[Ratio, _Mapping]] = ..., dimensions: _Optional[_Iterable[_Union[DimensionSpend, _Mapping]]] = ...) -> None: ...

class DimensionSpend(_message.Message):
    __slots__ = ("dimension", "value", "quantity", "spent_millicredits", "operations", "average_millicredits_per_unit", "average_millicredits_per_operation")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    SPENT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_MILLICREDITS_PER_UNIT_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_MILLICREDITS_PER_OPERATION_FIELD_NUMBER: _ClassVar[int]
    dimension: str
    value: str
    quantity: int
    spent_millicredits: int
    operations: int
    average_millicredits_per_unit: Ratio
    average_millicredits_per_operation: Ratio
    def __init__(self, dimension: _Optional[str] = ..., value: _Optional[str] = ..., quantity: _Optional[int] = ..., spent_millicredits: _Optional[int] = ..., operations: _Optional[int] = ..., average_millicredits_per_unit: _Optional[_Union[Ratio, _Mapping]] = ..., average_millicredits_per_operation: _Optional[_Union[Ratio, _Mapping]] = ...) -> None: ...

class MemberSpend(_message.Message):
    __slots__ = ("member_id", "spent_millicredits", "operations")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    SPENT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    spent_millicredits: int
    operations: int
    def __init__(self, member_id: _Optional[str] = ..., spent_millicredits: _Optional[int] = ..., operations: _Optional[int] = ...) -> None: ...
