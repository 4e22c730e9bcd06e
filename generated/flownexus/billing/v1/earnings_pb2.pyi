from flownexus.billing.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AwardCreditsRequest(_message.Message):
    __slots__ = ("user_id", "amount_millicredits", "reason", "source", "source_ref", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REF_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    amount_millicredits: int
    reason: str
    source: _common_pb2.EarningSource
    source_ref: str
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ..., reason: _Optional[str] = ..., source: _Optional[_Union[_common_pb2.EarningSource, str]] = ..., source_ref: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AwardCreditsResponse(_message.Message):
    __slots__ = ("transaction", "credits_millicredits")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    transaction: _common_pb2.Transaction
    credits_millicredits: int
    def __init__(self, transaction: _Optional[_Union[_common_pb2.Transaction, _Mapping]] = ..., credits_millicredits: _Optional[int] = ...) -> None: ...

class GetUserStatsRequest(_message.Message):
    __slots__ = ("user_id", "org_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    org_id: str
    def __init__(self, user_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class GetUserStatsResponse(_message.Message):
    __slots__ = ("user_id", "credits_earned_millicredits", "credits_spent_millicredits", "apps_published", "challenges_completed", "app_revenue_millicredits")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_EARNED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_SPENT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    APPS_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    CHALLENGES_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    APP_REVENUE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    credits_earned_millicredits: int
    credits_spent_millicredits: int
    apps_published: int
    challenges_completed: int
    app_revenue_millicredits: int
    def __init__(self, user_id: _Optional[str] = ..., credits_earned_millicredits: _Optional[int] = ..., credits_spent_millicredits: _Optional[int] = ..., apps_published: _Optional[int] = ..., challenges_completed: _Optional[int] = ..., app_revenue_millicredits: _Optional[int] = ...) -> None: ...
