"""PricingService: proto in, pricing rules, proto out."""

from __future__ import annotations

from typing import Any

from flownexus.billing.v1 import pricing_pb2, pricing_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from server.grpc import Ctx, validation
from server.platform import errors
from server.platform.auth import Role, principal
from server.pricing.card import MAX_METERS, InvalidRateCard, parse, shown
from server.pricing.models import Meter, RateCard, RateCardVersion
from server.pricing.service import PricingService
from server.registry import Registry


def _ts(us: int) -> Timestamp:
    t = Timestamp()
    t.FromMicroseconds(us)  # 0 is the epoch, a real instant here (the file's first version)
    return t


def meter_pb(m: Meter) -> pricing_pb2.Meter:
    names = [d.name for d in m.dimensions]
    return pricing_pb2.Meter(
        name=m.name, unit=m.unit, description=m.description, per_units=m.per_units,
        dimensions=[pricing_pb2.MeterDimension(name=d.name, values=d.values) for d in m.dimensions],
        prices=[
            pricing_pb2.MeterPrice(dimensions=dict(zip(names, combo, strict=True)), unit_price_millicredits=p)
            for combo, p in sorted(m.prices.items())
        ],
    )


def version_pb(v: RateCardVersion, *, meters: bool = True) -> pricing_pb2.RateCardVersion:
    return pricing_pb2.RateCardVersion(
        version=v.version, effective_time=_ts(v.effective_at_us), publish_time=_ts(v.published_at_us),
        published_by=v.published_by, card_sha256=v.card.sha256,
        meters=[meter_pb(v.card.meters[n]) for n in sorted(v.card.meters)] if meters else [],
    )


def card_from_pb(meters: Any) -> RateCard:
    """A PublishRateCard request's meters in the card's own form, then the
    same validation as the file's (InvalidRateCard names the field)."""
    if len(meters) > MAX_METERS:
        raise InvalidRateCard("meters", f"at most {MAX_METERS} meters")
    table: dict[str, Any] = {}
    for i, m in enumerate(meters):
        path = f"meters[{i}]"
        if not m.name:
            raise InvalidRateCard(f"{path}.name", "is required")
        if m.name in table:
            raise InvalidRateCard(f"{path}.name", f"names meter {shown(m.name)!r} a second time")
        entry: dict[str, Any] = {"unit": m.unit, "description": m.description}
        if m.per_units:
            entry["per_units"] = m.per_units
        dims: dict[str, list[str]] = {}
        for j, d in enumerate(m.dimensions):
            if d.name in dims:
                raise InvalidRateCard(f"{path}.dimensions[{j}].name", "names a dimension a second time")
            dims[d.name] = list(d.values)
        names = sorted(dims)
        if not dims:
            if len(m.prices) != 1 or m.prices[0].dimensions:
                raise InvalidRateCard(f"{path}.prices", "a meter without dimensions has exactly one price, "
                                      "with no dimensions")
            entry["price"] = m.prices[0].unit_price_millicredits
        else:
            entry["dimensions"] = dims
            tree: dict[str, Any] = {}
            for j, p in enumerate(m.prices):
                ppath = f"{path}.prices[{j}]"
                if sorted(p.dimensions) != names:
                    raise InvalidRateCard(f"{ppath}.dimensions", f"must give exactly the dimensions {', '.join(names)}")
                node = tree
                for name in names[:-1]:
                    node = node.setdefault(p.dimensions[name], {})
                    if not isinstance(node, dict):
                        raise InvalidRateCard(ppath, "prices a combination of values a second time")
                last = p.dimensions[names[-1]]
                if last in node:
                    raise InvalidRateCard(ppath, "prices a combination of values a second time")
                node[last] = p.unit_price_millicredits
            entry["prices"] = tree
        table[m.name] = entry
    return parse({"meters": table})


class PricingServicer(pricing_pb2_grpc.PricingServiceServicer):
    def __init__(self, pricing: PricingService) -> None:
        self.pricing = pricing

    async def ListMeters(self, request: pricing_pb2.ListMetersRequest, context: Ctx) -> pricing_pb2.ListMetersResponse:
        principal()
        v = self.pricing.card_at(None)
        return pricing_pb2.ListMetersResponse(
            meters=[meter_pb(v.card.meters[n]) for n in sorted(v.card.meters)], version=v.version
        )

    async def GetRateCard(
        self, request: pricing_pb2.GetRateCardRequest, context: Ctx
    ) -> pricing_pb2.GetRateCardResponse:
        principal()
        as_of = validation.timestamp(request.as_of_time, request.HasField("as_of_time"), field="as_of_time")
        if request.version < 0 or (request.version and as_of is not None):
            raise errors.InvalidArgument(
                "give as_of_time or a version number (at least 1), not both", reason="INVALID_VERSION",
                metadata={"field": "version"},
            )
        return pricing_pb2.GetRateCardResponse(rate_card=version_pb(self.pricing.card_at(as_of, request.version)))

    async def ListRateCardVersions(
        self, request: pricing_pb2.ListRateCardVersionsRequest, context: Ctx
    ) -> pricing_pb2.ListRateCardVersionsResponse:
        principal()
        size = validation.page_size(request.page_size)
        sig = validation.filters_signature("ListRateCardVersions")
        below = validation.decode_page_token(request.page_token, sig, int)
        found = self.pricing.versions(size + 1, below)
        resp = pricing_pb2.ListRateCardVersionsResponse(versions=[version_pb(v, meters=False) for v in found[:size]])
        if len(found) > size:
            resp.next_page_token = validation.encode_page_token(found[size - 1].version, sig)
        return resp

    async def PublishRateCard(
        self, request: pricing_pb2.PublishRateCardRequest, context: Ctx
    ) -> pricing_pb2.PublishRateCardResponse:
        p = principal()
        p.require(Role.ADMIN, what="PublishRateCard")  # before the card: a non-admin learns nothing of it
        request_id = validation.request_id(request.request_id)
        effective = validation.timestamp(request.effective_time, request.HasField("effective_time"),
                                         field="effective_time")
        card = card_from_pb(request.meters)
        v = await self.pricing.publish(
            p, card, effective, request_id=request_id,
            fingerprint=validation.fingerprint("PublishRateCard", request),
        )
        return pricing_pb2.PublishRateCardResponse(rate_card=version_pb(v))

    async def EstimateCost(
        self, request: pricing_pb2.EstimateCostRequest, context: Ctx
    ) -> pricing_pb2.EstimateCostResponse:
        principal()
        at = validation.timestamp(request.usage_time, request.HasField("usage_time"), field="usage_time")
        q = self.pricing.estimate(self.pricing.usage_from_proto(request.usage), at)
        return pricing_pb2.EstimateCostResponse(
            amount_millicredits=q.amount, version=q.version, unit_price_millicredits=q.unit_price,
            per_units=q.per_units,
        )


def register(reg: Registry, service: PricingService) -> None:
    reg.servicer(pricing_pb2_grpc.add_PricingServiceServicer_to_server, PricingServicer(service))
    reg.on_stop.append(service.stop)
