import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AutoRefillState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUTO_REFILL_STATE_UNSPECIFIED: _ClassVar[AutoRefillState]
    AUTO_REFILL_STATE_DISABLED: _ClassVar[AutoRefillState]
    AUTO_REFILL_STATE_IDLE: _ClassVar[AutoRefillState]
    AUTO_REFILL_STATE_IN_FLIGHT: _ClassVar[AutoRefillState]
    AUTO_REFILL_STATE_RETRY_SCHEDULED: _ClassVar[AutoRefillState]
    AUTO_REFILL_STATE_ACTION_REQUIRED: _ClassVar[AutoRefillState]
    AUTO_REFILL_STATE_PAUSED: _ClassVar[AutoRefillState]
AUTO_REFILL_STATE_UNSPECIFIED: AutoRefillState
AUTO_REFILL_STATE_DISABLED: AutoRefillState
AUTO_REFILL_STATE_IDLE: AutoRefillState
AUTO_REFILL_STATE_IN_FLIGHT: AutoRefillState
AUTO_REFILL_STATE_RETRY_SCHEDULED: AutoRefillState
AUTO_REFILL_STATE_ACTION_REQUIRED: AutoRefillState
AUTO_REFILL_STATE_PAUSED: AutoRefillState

class PaymentMethod(_message.Message):
    __slots__ = ("brand", "last4", "exp_month", "exp_year")
    BRAND_FIELD_NUMBER: _ClassVar[int]
    LAST4_FIELD_NUMBER: _ClassVar[int]
    EXP_MONTH_FIELD_NUMBER: _ClassVar[int]
    EXP_YEAR_FIELD_NUMBER: _ClassVar[int]
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    def __init__(self, brand: _Optional[str] = ..., last4: _Optional[str] = ..., exp_month: _Optional[int] = ..., exp_year: _Optional[int] = ...) -> None: ...

class AutoRefill(_message.Message):
    __slots__ = ("enabled", "threshold_millicredits", "amount_cents", "credits_amount_millicredits", "next_charge", "payment_method", "monthly_cap_cents", "monthly_used_cents", "state", "paused_reason", "recovery_url", "next_retry_at", "last_failure_reason")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHARGE_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_CAP_CENTS_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_USED_CENTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_REASON_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_URL_FIELD_NUMBER: _ClassVar[int]
    NEXT_RETRY_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    threshold_millicredits: int
    amount_cents: int
    credits_amount_millicredits: int
    next_charge: str
    payment_method: PaymentMethod
    monthly_cap_cents: int
    monthly_used_cents: int
    state: AutoRefillState
    paused_reason: str
    recovery_url: str
    next_retry_at: _timestamp_pb2.Timestamp
    last_failure_reason: str
    def __init__(self, enabled: _Optional[bool] = ..., threshold_millicredits: _Optional[int] = ..., amount_cents: _Optional[int] = ..., credits_amount_millicredits: _Optional[int] = ..., next_charge: _Optional[str] = ..., payment_method: _Optional[_Union[PaymentMethod, _Mapping]] = ..., monthly_cap_cents: _Optional[int] = ..., monthly_used_cents: _Optional[int] = ..., state: _Optional[_Union[AutoRefillState, str]] = ..., paused_reason: _Optional[str] = ..., recovery_url: _Optional[str] = ..., next_retry_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_failure_reason: _Optional[str] = ...) -> None: ...

class ConfigureAutoRefillRequest(_message.Message):
    __slots__ = ("enabled", "threshold_millicredits", "amount_cents", "request_id", "org_id")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    threshold_millicredits: int
    amount_cents: int
    request_id: str
    org_id: str
    def __init__(self, enabled: _Optional[bool] = ..., threshold_millicredits: _Optional[int] = ..., amount_cents: _Optional[int] = ..., request_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class ConfigureAutoRefillResponse(_message.Message):
    __slots__ = ("auto_refill",)
    AUTO_REFILL_FIELD_NUMBER: _ClassVar[int]
    auto_refill: AutoRefill
    def __init__(self, auto_refill: _Optional[_Union[AutoRefill, _Mapping]] = ...) -> None: ...

class GetAutoRefillRequest(_message.Message):
    __slots__ = ("user_id", "org_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    org_id: str
    def __init__(self, user_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class GetAutoRefillResponse(_message.Message):
    __slots__ = ("auto_refill",)
    AUTO_REFILL_FIELD_NUMBER: _ClassVar[int]
    auto_refill: AutoRefill
    def __init__(self, auto_refill: _Optional[_Union[AutoRefill, _Mapping]] = ...) -> None: ...

class CreateSetupLinkRequest(_message.Message):
    __slots__ = ("request_id", "org_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    org_id: str
    def __init__(self, request_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class CreateSetupLinkResponse(_message.Message):
    __slots__ = ("setup_url", "expires_at")
    SETUP_URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    setup_url: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, setup_url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
