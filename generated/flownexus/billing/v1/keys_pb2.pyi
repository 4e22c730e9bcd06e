import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BudgetWindow(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUDGET_WINDOW_UNSPECIFIED: _ClassVar[BudgetWindow]
    BUDGET_WINDOW_HOUR: _ClassVar[BudgetWindow]
    BUDGET_WINDOW_DAY: _ClassVar[BudgetWindow]
    BUDGET_WINDOW_MONTH: _ClassVar[BudgetWindow]
    BUDGET_WINDOW_LIFETIME: _ClassVar[BudgetWindow]
BUDGET_WINDOW_UNSPECIFIED: BudgetWindow
BUDGET_WINDOW_HOUR: BudgetWindow
BUDGET_WINDOW_DAY: BudgetWindow
BUDGET_WINDOW_MONTH: BudgetWindow
BUDGET_WINDOW_LIFETIME: BudgetWindow

class Budget(_message.Message):
    __slots__ = ("window", "limit_millicredits", "used_millicredits", "remaining_millicredits", "resets_at")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    USED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    RESETS_AT_FIELD_NUMBER: _ClassVar[int]
    window: BudgetWindow
    limit_millicredits: int
    used_millicredits: int
    remaining_millicredits: int
    resets_at: _timestamp_pb2.Timestamp
    def __init__(self, window: _Optional[_Union[BudgetWindow, str]] = ..., limit_millicredits: _Optional[int] = ..., used_millicredits: _Optional[int] = ..., remaining_millicredits: _Optional[int] = ..., resets_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Key(_message.Message):
    __slots__ = ("id", "user_id", "label", "categories", "max_spend_millicredits", "expires_at", "budgets", "create_time", "revoke_time", "secret_prefix")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MAX_SPEND_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    SECRET_PREFIX_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    label: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    max_spend_millicredits: int
    expires_at: _timestamp_pb2.Timestamp
    budgets: _containers.RepeatedCompositeFieldContainer[Budget]
    create_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    secret_prefix: str
    def __init__(self, id: _Optional[str] = ..., user_id: _Optional[str] = ..., label: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., max_spend_millicredits: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., budgets: _Optional[_Iterable[_Union[Budget, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., secret_prefix: _Optional[str] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("user_id", "label", "budgets", "categories", "max_spend_millicredits", "expires_at", "request_id", "org_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MAX_SPEND_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    label: str
    budgets: _containers.RepeatedCompositeFieldContainer[Budget]
    categories: _containers.RepeatedScalarFieldContainer[str]
    max_spend_millicredits: int
    expires_at: _timestamp_pb2.Timestamp
    request_id: str
    org_id: str
    def __init__(self, user_id: _Optional[str] = ..., label: _Optional[str] = ..., budgets: _Optional[_Iterable[_Union[Budget, _Mapping]]] = ..., categories: _Optional[_Iterable[str]] = ..., max_spend_millicredits: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key", "secret")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    key: Key
    secret: str
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class GetKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("user_id", "page_size", "page_token", "org_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    page_size: int
    page_token: str
    org_id: str
    def __init__(self, user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[Key]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[Key, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateKeyRequest(_message.Message):
    __slots__ = ("key_id", "update_mask", "label", "budgets", "categories", "max_spend_millicredits", "expires_at", "request_id")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MAX_SPEND_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    update_mask: _field_mask_pb2.FieldMask
    label: str
    budgets: _containers.RepeatedCompositeFieldContainer[Budget]
    categories: _containers.RepeatedScalarFieldContainer[str]
    max_spend_millicredits: int
    expires_at: _timestamp_pb2.Timestamp
    request_id: str
    def __init__(self, key_id: _Optional[str] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., label: _Optional[str] = ..., budgets: _Optional[_Iterable[_Union[Budget, _Mapping]]] = ..., categories: _Optional[_Iterable[str]] = ..., max_spend_millicredits: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("key_id", "request_id")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    request_id: str
    def __init__(self, key_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RevokeKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...
