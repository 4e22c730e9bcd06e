import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from flownexus.billing.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MeterDimension(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class MeterPrice(_message.Message):
    __slots__ = ("dimensions", "unit_price_millicredits")
    class DimensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    dimensions: _containers.ScalarMap[str, str]
    unit_price_millicredits: int
    def __init__(self, dimensions: _Optional[_Mapping[str, str]] = ..., unit_price_millicredits: _Optional[int] = ...) -> None: ...

class Meter(_message.Message):
    __slots__ = ("name", "unit", "description", "dimensions", "per_units", "prices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    PER_UNITS_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    unit: str
    description: str
    dimensions: _containers.RepeatedCompositeFieldContainer[MeterDimension]
    per_units: int
    prices: _containers.RepeatedCompositeFieldContainer[MeterPrice]
    def __init__(self, name: _Optional[str] = ..., unit: _Optional[str] = ..., description: _Optional[str] = ..., dimensions: _Optional[_Iterable[_Union[MeterDimension, _Mapping]]] = ..., per_units: _Optional[int] = ..., prices: _Optional[_Iterable[_Union[MeterPrice, _Mapping]]] = ...) -> None: ...

class RateCardVersion(_message.Message):
    __slots__ = ("version", "effective_time", "publish_time", "published_by", "card_sha256", "meters")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIME_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_BY_FIELD_NUMBER: _ClassVar[int]
    CARD_SHA256_FIELD_NUMBER: _ClassVar[int]
    METERS_FIELD_NUMBER: _ClassVar[int]
    version: int
    effective_time: _timestamp_pb2.Timestamp
    publish_time: _timestamp_pb2.Timestamp
    published_by: str
    card_sha256: str
    meters: _containers.RepeatedCompositeFieldContainer[Meter]
    def __init__(self, version: _Optional[int] = ..., effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., publish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., published_by: _Optional[str] = ..., card_sha256: _Optional[str] = ..., meters: _Optional[_Iterable[_Union[Meter, _Mapping]]] = ...) -> None: ...

class ListMetersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMetersResponse(_message.Message):
    __slots__ = ("meters", "version")
    METERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    meters: _containers.RepeatedCompositeFieldContainer[Meter]
    version: int
    def __init__(self, meters: _Optional[_Iterable[_Union[Meter, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class GetRateCardRequest(_message.Message):
    __slots__ = ("as_of_time", "version")
    AS_OF_TIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    as_of_time: _timestamp_pb2.Timestamp
    version: int
    def __init__(self, as_of_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class GetRateCardResponse(_message.Message):
    __slots__ = ("rate_card",)
    RATE_CARD_FIELD_NUMBER: _ClassVar[int]
    rate_card: RateCardVersion
    def __init__(self, rate_card: _Optional[_Union[RateCardVersion, _Mapping]] = ...) -> None: ...

class ListRateCardVersionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRateCardVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[RateCardVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[RateCardVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PublishRateCardRequest(_message.Message):
    __slots__ = ("meters", "effective_time", "request_id")
    METERS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    meters: _containers.RepeatedCompositeFieldContainer[Meter]
    effective_time: _timestamp_pb2.Timestamp
    request_id: str
    def __init__(self, meters: _Optional[_Iterable[_Union[Meter, _Mapping]]] = ..., effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PublishRateCardResponse(_message.Message):
    __slots__ = ("rate_card",)
    RATE_CARD_FIELD_NUMBER: _ClassVar[int]
    rate_card: RateCardVersion
    def __init__(self, rate_card: _Optional[_Union[RateCardVersion, _Mapping]] = ...) -> None: ...

class EstimateCostRequest(_message.Message):
    __slots__ = ("usage", "usage_time")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    USAGE_TIME_FIELD_NUMBER: _ClassVar[int]
    usage: _common_pb2.Usage
    usage_time: _timestamp_pb2.Timestamp
    def __init__(self, usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., usage_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EstimateCostResponse(_message.Message):
    __slots__ = ("amount_millicredits", "version", "unit_price_millicredits", "per_units")
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    PER_UNITS_FIELD_NUMBER: _ClassVar[int]
    amount_millicredits: int
    version: int
    unit_price_millicredits: int
    per_units: int
    def __init__(self, amount_millicredits: _Optional[int] = ..., version: _Optional[int] = ..., unit_price_millicredits: _Optional[int] = ..., per_units: _Optional[int] = ...) -> None: ...
