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

class AccountFlag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_FLAG_UNSPECIFIED: _ClassVar[AccountFlag]
    ACCOUNT_FLAG_DISPUTED: _ClassVar[AccountFlag]
ACCOUNT_FLAG_UNSPECIFIED: AccountFlag
ACCOUNT_FLAG_DISPUTED: AccountFlag

class AdjustBalanceRequest(_message.Message):
    __slots__ = ("user_id", "amount_millicredits", "reason", "lot", "expires_at", "allow_negative", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LOT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    amount_millicredits: int
    reason: str
    lot: _common_pb2.LotKind
    expires_at: _timestamp_pb2.Timestamp
    allow_negative: bool
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ..., reason: _Optional[str] = ..., lot: _Optional[_Union[_common_pb2.LotKind, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., allow_negative: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class AdjustBalanceResponse(_message.Message):
    __slots__ = ("transaction", "credits_millicredits", "action_id")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    transaction: _common_pb2.Transaction
    credits_millicredits: int
    action_id: str
    def __init__(self, transaction: _Optional[_Union[_common_pb2.Transaction, _Mapping]] = ..., credits_millicredits: _Optional[int] = ..., action_id: _Optional[str] = ...) -> None: ...

class ReverseTransactionRequest(_message.Message):
    __slots__ = ("transaction_id", "reason", "request_id")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    reason: str
    request_id: str
    def __init__(self, transaction_id: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReverseTransactionResponse(_message.Message):
    __slots__ = ("transactions", "action_id")
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Transaction]
    action_id: str
    def __init__(self, transactions: _Optional[_Iterable[_Union[_common_pb2.Transaction, _Mapping]]] = ..., action_id: _Optional[str] = ...) -> None: ...

class SetAccountFlagRequest(_message.Message):
    __slots__ = ("user_id", "flag", "reason", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    flag: AccountFlag
    reason: str
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., flag: _Optional[_Union[AccountFlag, str]] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetAccountFlagResponse(_message.Message):
    __slots__ = ("user_id", "flagged_reason", "action_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_REASON_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    flagged_reason: str
    action_id: str
    def __init__(self, user_id: _Optional[str] = ..., flagged_reason: _Optional[str] = ..., action_id: _Optional[str] = ...) -> None: ...

class ClearAccountFlagRequest(_message.Message):
    __slots__ = ("user_id", "flag", "reason", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    flag: AccountFlag
    reason: str
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., flag: _Optional[_Union[AccountFlag, str]] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ClearAccountFlagResponse(_message.Message):
    __slots__ = ("user_id", "action_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    action_id: str
    def __init__(self, user_id: _Optional[str] = ..., action_id: _Optional[str] = ...) -> None: ...

class AdminAction(_message.Message):
    __slots__ = ("id", "actor", "action", "user_id", "reason", "request_id", "transaction_ids", "create_time", "details_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    actor: str
    action: str
    user_id: str
    reason: str
    request_id: str
    transaction_ids: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    details_json: str
    def __init__(self, id: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., user_id: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., transaction_ids: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., details_json: _Optional[str] = ...) -> None: ...

class ListAdminActionsRequest(_message.Message):
    __slots__ = ("user_id", "action", "actor", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    action: str
    actor: str
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., action: _Optional[str] = ..., actor: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAdminActionsResponse(_message.Message):
    __slots__ = ("actions", "next_page_token")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[AdminAction]
    next_page_token: str
    def __init__(self, actions: _Optional[_Iterable[_Union[AdminAction, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
