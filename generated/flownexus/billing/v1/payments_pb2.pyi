import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PaymentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYMENT_STATUS_UNSPECIFIED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_PENDING: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_PAID: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_FAILED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_EXPIRED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_REFUNDED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_PARTIALLY_REFUNDED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_DISPUTED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_AMOUNT_MISMATCH: _ClassVar[PaymentStatus]

class PaymentKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYMENT_KIND_UNSPECIFIED: _ClassVar[PaymentKind]
    PAYMENT_KIND_CHECKOUT: _ClassVar[PaymentKind]
    PAYMENT_KIND_AUTO_REFILL: _ClassVar[PaymentKind]
    PAYMENT_KIND_SUBSCRIPTION: _ClassVar[PaymentKind]
    PAYMENT_KIND_TOP_UP: _ClassVar[PaymentKind]
PAYMENT_STATUS_UNSPECIFIED: PaymentStatus
PAYMENT_STATUS_PENDING: PaymentStatus
PAYMENT_STATUS_PAID: PaymentStatus
PAYMENT_STATUS_FAILED: PaymentStatus
PAYMENT_STATUS_EXPIRED: PaymentStatus
PAYMENT_STATUS_REFUNDED: PaymentStatus
PAYMENT_STATUS_PARTIALLY_REFUNDED: PaymentStatus
PAYMENT_STATUS_DISPUTED: PaymentStatus
PAYMENT_STATUS_AMOUNT_MISMATCH: PaymentStatus
PAYMENT_KIND_UNSPECIFIED: PaymentKind
PAYMENT_KIND_CHECKOUT: PaymentKind
PAYMENT_KIND_AUTO_REFILL: PaymentKind
PAYMENT_KIND_SUBSCRIPTION: PaymentKind
PAYMENT_KIND_TOP_UP: PaymentKind

class Payment(_message.Message):
    __slots__ = ("id", "user_id", "date", "amount_cents", "currency", "status", "credits_millicredits", "invoice_url", "kind", "failure_reason", "refunded_cents", "payment_url")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    INVOICE_URL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_CENTS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_URL_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    date: _timestamp_pb2.Timestamp
    amount_cents: int
    currency: str
    status: PaymentStatus
    credits_millicredits: int
    invoice_url: str
    kind: PaymentKind
    failure_reason: str
    refunded_cents: int
    payment_url: str
    def __init__(self, id: _Optional[str] = ..., user_id: _Optional[str] = ..., date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., amount_cents: _Optional[int] = ..., currency: _Optional[str] = ..., status: _Optional[_Union[PaymentStatus, str]] = ..., credits_millicredits: _Optional[int] = ..., invoice_url: _Optional[str] = ..., kind: _Optional[_Union[PaymentKind, str]] = ..., failure_reason: _Optional[str] = ..., refunded_cents: _Optional[int] = ..., payment_url: _Optional[str] = ...) -> None: ...

class CreatePaymentLinkRequest(_message.Message):
    __slots__ = ("amount_cents", "request_id", "org_id")
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    amount_cents: int
    request_id: str
    org_id: str
    def __init__(self, amount_cents: _Optional[int] = ..., request_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class CreatePaymentLinkResponse(_message.Message):
    __slots__ = ("payment_url", "expires_at", "credits_amount_millicredits", "payment_id")
    PAYMENT_URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CREDITS_AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    payment_url: str
    expires_at: _timestamp_pb2.Timestamp
    credits_amount_millicredits: int
    payment_id: str
    def __init__(self, payment_url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., credits_amount_millicredits: _Optional[int] = ..., payment_id: _Optional[str] = ...) -> None: ...

class GetPaymentRequest(_message.Message):
    __slots__ = ("payment_id",)
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    def __init__(self, payment_id: _Optional[str] = ...) -> None: ...

class GetPaymentResponse(_message.Message):
    __slots__ = ("payment",)
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    payment: Payment
    def __init__(self, payment: _Optional[_Union[Payment, _Mapping]] = ...) -> None: ...

class ListPaymentsRequest(_message.Message):
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

class ListPaymentsResponse(_message.Message):
    __slots__ = ("payments", "next_page_token")
    PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    payments: _containers.RepeatedCompositeFieldContainer[Payment]
    next_page_token: str
    def __init__(self, payments: _Optional[_Iterable[_Union[Payment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TopUpRequest(_message.Message):
    __slots__ = ("amount_cents", "request_id", "org_id")
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    amount_cents: int
    request_id: str
    org_id: str
    def __init__(self, amount_cents: _Optional[int] = ..., request_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class TopUpResponse(_message.Message):
    __slots__ = ("payment", "payment_url", "balance_millicredits")
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_URL_FIELD_NUMBER: _ClassVar[int]
    BALANCE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    payment: Payment
    payment_url: str
    balance_millicredits: int
    def __init__(self, payment: _Optional[_Union[Payment, _Mapping]] = ..., payment_url: _Optional[str] = ..., balance_millicredits: _Optional[int] = ...) -> None: ...
