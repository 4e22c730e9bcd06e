import datetime

from flownexus.billing.v1 import common_pb2 as _common_pb2
from flownexus.billing.v1 import payments_pb2 as _payments_pb2
from flownexus.billing.v1 import refill_pb2 as _refill_pb2
from flownexus.billing.v1 import tier_pb2 as _tier_pb2
from flownexus.billing.v1 import usage_pb2 as _usage_pb2
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

class GetAccountRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class RefillAttempt(_message.Message):
    __slots__ = ("id", "status", "amount_cents", "credits_millicredits", "attempts", "payment_id", "last_error", "create_time", "update_time", "next_run_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    amount_cents: int
    credits_millicredits: int
    attempts: int
    payment_id: str
    last_error: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    next_run_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., amount_cents: _Optional[int] = ..., credits_millicredits: _Optional[int] = ..., attempts: _Optional[int] = ..., payment_id: _Optional[str] = ..., last_error: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_run_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AccountPayment(_message.Message):
    __slots__ = ("payment", "checkout_session_id", "payment_intent_id", "charge_id", "dispute_id", "paid_time")
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    CHECKOUT_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_INTENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    DISPUTE_ID_FIELD_NUMBER: _ClassVar[int]
    PAID_TIME_FIELD_NUMBER: _ClassVar[int]
    payment: _payments_pb2.Payment
    checkout_session_id: str
    payment_intent_id: str
    charge_id: str
    dispute_id: str
    paid_time: _timestamp_pb2.Timestamp
    def __init__(self, payment: _Optional[_Union[_payments_pb2.Payment, _Mapping]] = ..., checkout_session_id: _Optional[str] = ..., payment_intent_id: _Optional[str] = ..., charge_id: _Optional[str] = ..., dispute_id: _Optional[str] = ..., paid_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetAccountResponse(_message.Message):
    __slots__ = ("user_id", "credits_millicredits", "pending_millicredits", "earned_total_millicredits", "spent_total_millicredits", "unlimited_overdraft", "lots", "active_holds", "flagged_reason", "tier", "period_start", "period_end", "subscription_status", "stripe_subscription_id", "stripe_customer_id", "auto_refill", "refill_attempts", "payments")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    PENDING_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    EARNED_TOTAL_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    SPENT_TOTAL_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    UNLIMITED_OVERDRAFT_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_HOLDS_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_REASON_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_STATUS_FIELD_NUMBER: _ClassVar[int]
    STRIPE_SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AUTO_REFILL_FIELD_NUMBER: _ClassVar[int]
    REFILL_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    credits_millicredits: int
    pending_millicredits: int
    earned_total_millicredits: int
    spent_total_millicredits: int
    unlimited_overdraft: bool
    lots: _containers.RepeatedCompositeFieldContainer[_common_pb2.CreditLot]
    active_holds: _containers.RepeatedCompositeFieldContainer[_usage_pb2.Hold]
    flagged_reason: str
    tier: _common_pb2.Tier
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    subscription_status: _tier_pb2.SubscriptionStatus
    stripe_subscription_id: str
    stripe_customer_id: str
    auto_refill: _refill_pb2.AutoRefill
    refill_attempts: _containers.RepeatedCompositeFieldContainer[RefillAttempt]
    payments: _containers.RepeatedCompositeFieldContainer[AccountPayment]
    def __init__(self, user_id: _Optional[str] = ..., credits_millicredits: _Optional[int] = ..., pending_millicredits: _Optional[int] = ..., earned_total_millicredits: _Optional[int] = ..., spent_total_millicredits: _Optional[int] = ..., unlimited_overdraft: _Optional[bool] = ..., lots: _Optional[_Iterable[_Union[_common_pb2.CreditLot, _Mapping]]] = ..., active_holds: _Optional[_Iterable[_Union[_usage_pb2.Hold, _Mapping]]] = ..., flagged_reason: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., subscription_status: _Optional[_Union[_tier_pb2.SubscriptionStatus, str]] = ..., stripe_subscription_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., auto_refill: _Optional[_Union[_refill_pb2.AutoRefill, _Mapping]] = ..., refill_attempts: _Optional[_Iterable[_Union[RefillAttempt, _Mapping]]] = ..., payments: _Optional[_Iterable[_Union[AccountPayment, _Mapping]]] = ...) -> None: ...
