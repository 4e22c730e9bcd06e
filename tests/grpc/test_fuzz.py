"""Generated fuzz test: every RPC of every service, with random requests built
from the generated proto descriptors, under user, service and admin tokens.

The strategies are derived from the descriptors themselves, so a new RPC or
field is fuzzed without touching this file: every scalar type at its edges
(int64/int32 extremes), enums (known, unspecified, unknown, negative),
strings with odd Unicode (NUL, controls, RTL overrides, astral planes,
oversized), bytes, repeated fields, maps, nested messages, and Timestamps and
Durations far outside their valid ranges. Unary calls are awaited; a
server-streaming call is read for a few messages under a short deadline.

Whatever the input: never INTERNAL, UNKNOWN or UNAVAILABLE, and the server logs no
traceback (nor any ERROR). The ledger audit (`verify`) passes afterwards.
The same for correctly signed webhook bodies: 200 or 400, never 5xx, and a
400 stores nothing.
The server runs on its own event-loop thread (as in tests/ledger/test_model.py) and
the examples are bounded so that each database takes well under a minute.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import pkgutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flownexus.billing.v1 as billing_v1
import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.platform.clock import ManualClock
from tests.conftest import _require_postgres
from tests.harness import PINNED_START, Running, auth, database
from tests.stripe_fake import WEBHOOK_SECRET, sign

I64 = (-(2**63), 2**63 - 1)
I32 = (-(2**31), 2**31 - 1)
U64 = (0, 2**64 - 1)
U32 = (0, 2**32 - 1)
USER = "fuzz-user"
# Examples per RPC (about 30 RPCs): BILLING_FUZZ_EXAMPLES raises it for a longer run.
EXAMPLES = int(os.environ.get("BILLING_FUZZ_EXAMPLES", "25"))
WEBHOOK_EXAMPLES = 3 * EXAMPLES
STREAM_DEADLINE_S = 0.3
# UNAVAILABLE tells a client to retry: never the answer to its own mistake.
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}

ODD_STRINGS = [
    "", USER, "victim", "1", "0", "-1", "9" * 25, "hold_x", "pay_x", "a\x00b", "\x00", "\t\n", "\x1b[31m", "\x7f", "\x85",
    "\u202eevil", "\ufeff", "\u2028", "ü", "用户", "💸" * 3, "\U0010fffd", "x" * 129, "y" * 600, "z" * 5000,
    "' OR 1=1 --", "../../etc/passwd", "%s%n", "null", "eyJwIjoxfQ", "AAAA", "sandbox",
    # Ids of the other domains' shapes (and near misses), so their lookups are reached.
    "org_" + "0" * 32, "org_" + "A" * 32, "key_" + "0" * 32, "evt_1", "evt_\u00b2", "evt_\u0661", "we_x",
]
EDGE_SECONDS = [
    2**62, -(2**62), 253_402_300_800, 253_402_300_799, -62_135_596_801, -62_135_596_800, 10**12, 0, 1, -1, *I64,
]


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Integers of a field's range, its edges and the service's own limits often."""
    edges = sorted(v for v in {lo, hi, 0, 1, -1, 1000, 10**15, 10**15 + 1, 2**31, 2**53} if lo <= v <= hi)
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


_TEXT = st.one_of(
    st.sampled_from(ODD_STRINGS),
    # Any Unicode scalar value (protobuf strings are UTF-8, so no lone surrogates).
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    st.text(st.characters(codec="ascii"), max_size=20),
)


def _timestamp_like(desc: Descriptor) -> st.SearchStrategy[Any]:
    cls = message_factory.GetMessageClass(desc)
    return st.builds(
        lambda s, n: cls(seconds=s, nanos=n),
        st.one_of(st.sampled_from(EDGE_SECONDS), st.integers(*I64), st.integers(0, 5_000_000_000)),
        st.one_of(st.sampled_from([0, -1, 999_999_999, 10**9, *I32]), st.integers(*I32)),
    )


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return _ints(*I64)
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return _ints(*I32)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _ints(*U64)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _ints(*U32)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    if t == FieldDescriptor.TYPE_STRING:
        return _TEXT
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.sampled_from([-1, 99, I32[0], I32[1]]))
    raise AssertionError(f"no strategy for field type {t} ({field.full_name})")


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def message_strategy(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Random instances of the message `desc`: each field set or left unset."""
    if desc.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return _timestamp_like(desc)
    cls = message_factory.GetMessageClass(desc)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                key_f, value_f = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
                value = message_strategy(value_f.message_type, depth + 1) if value_f.type == FieldDescriptor.TYPE_MESSAGE else _scalar(value_f)
                optional[field.name] = st.dictionaries(_scalar(key_f), value, max_size=20)
                continue
            if depth >= 3:
                continue
            inner = message_strategy(field.message_type, depth + 1)
        else:
            inner = _scalar(field)
        optional[field.name] = st.lists(inner, max_size=4) if _repeated(field) else inner
    return st.fixed_dictionaries({}, optional=optional).map(lambda kw: cls(**kw))


@dataclass(frozen=True)
class Rpc:
    path: str
    method: MethodDescriptor

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)


def every_rpc() -> list[Rpc]:
    """Every method of every service in the generated package's descriptors."""
    out = []
    for mod in pkgutil.iter_modules(billing_v1.__path__):
        if not mod.name.endswith("_pb2"):
            continue
        pb2 = importlib.import_module(f"{billing_v1.__name__}.{mod.name}")
        for service in pb2.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                assert not m.client_streaming, f"{m.full_name}: client streaming is not fuzzed"
                out.append(Rpc(f"/{service.full_name}/{m.name}", m))
    return sorted(out, key=lambda r: r.path)


RPCS = every_rpc()


class ServerLog(logging.Handler):
    """The in-process server's log records that carry a traceback or are errors."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info or record.levelno >= logging.ERROR or "Traceback" in message:
            self.bad.append(f"{record.name} {record.levelname}: {message}")


class Service:
    """A real server on its own event-loop thread, called through a synchronous channel."""

    def __init__(self, kind: str, tmp: Path, **overrides: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        if kind == "postgres":
            self.run(_require_postgres())
        self._db = database(kind, tmp)
        url = self.run(self._db.__aenter__())
        self.server = Running(url, ManualClock(int(PINNED_START.timestamp()) * 1_000_000), **overrides)
        self.run(self.server.start())
        assert self.server.app is not None
        self.channel = grpc.insecure_channel(self.server.target)
        self.tokens = {role: auth(who, role) for who, role in ((USER, "user"), ("fuzz-svc", "service"), ("fuzz-ops", "admin"))}

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def call(self, rpc: Rpc, request: Any, role: str) -> grpc.StatusCode:
        resp_cls = message_factory.GetMessageClass(rpc.method.output_type)
        md = self.tokens[role]
        try:
            if rpc.streaming:
                stream = self.channel.unary_stream(rpc.path, request_serializer=lambda m: m.SerializeToString(),
                                                   response_deserializer=resp_cls.FromString)
                for i, _ in enumerate(stream(request, metadata=md, timeout=STREAM_DEADLINE_S)):
                    if i >= 2:
                        break
            else:
                unary = self.channel.unary_unary(rpc.path, request_serializer=lambda m: m.SerializeToString(),
                                                 response_deserializer=resp_cls.FromString)
                unary(request, metadata=md, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    def audit(self) -> list[str]:
        assert self.server.app is not None
        return list(self.run(self.server.audit()).problems)

    def close(self) -> None:
        self.channel.close()
        self.run(self.server.stop())
        self.run(self._db.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def service(db_kind: str, tmp_path: Path) -> Iterator[Service]:
    svc = Service(db_kind, tmp_path)
    try:
        yield svc
    finally:
        svc.close()


def test_every_rpc_is_found() -> None:
    """The services fuzzed (every one of the generated package) are exactly
    those the server registers, and tests/grpc/test_hostile.py lists each of
    their RPCs: a new service or RPC is covered by both or fails here."""
    from server.app import SERVICE_NAMES
    from tests.grpc.test_hostile import EVERY_RPC

    assert {r.method.containing_service.full_name for r in RPCS} == set(SERVICE_NAMES)
    assert sorted(m for _, m, _ in EVERY_RPC) == sorted(r.method.name for r in RPCS)
    assert any(r.streaming for r in RPCS)


def registered_services(service: Service) -> set[str]:
    """The services the running server's registry adds (by their generated
    `add_<Name>Servicer_to_server`), beside health and reflection."""
    assert service.server.app is not None
    names = set()
    for add, _ in service.server.app.registry.servicers:
        name = add.__name__.removeprefix("add_").removesuffix("Servicer_to_server")
        names.add(name)
    return names


def fuzz(service: Service, rpc: Rpc, log: ServerLog, codes: set[str]) -> Any:
    """A Hypothesis test of one RPC: random requests under random roles."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(request=message_strategy(rpc.method.input_type), role=st.sampled_from(["user", "service", "admin"]))
    def one(request: Any, role: str) -> None:
        logged = len(log.bad)
        code = service.call(rpc, request, role)
        codes.add(code.name)
        assert code not in BAD_CODES, f"{rpc.path} as {role} answered {code.name} for {request!r}"[:3000]
        new = log.bad[logged:]
        assert not new, f"{rpc.path} as {role} logged: {new[:3]} for {request!r}"[:3000]

    return one


def test_fuzz_every_rpc(service: Service) -> None:
    assert registered_services(service) == {r.method.containing_service.name for r in RPCS}
    log = ServerLog()
    logging.getLogger().addHandler(log)
    seen: dict[str, set[str]] = {}
    try:
        for rpc in RPCS:
            fuzz(service, rpc, log, seen.setdefault(rpc.path, set()))()
    finally:
        logging.getLogger().removeHandler(log)
    assert log.bad == []
    assert len(seen) == len(RPCS)
    # The fuzzer got past authentication and validation somewhere: not all refusals.
    assert any("OK" in codes for codes in seen.values()), seen
    assert service.audit() == []


# ---- signed webhooks -------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
# Fields the handlers of every domain read from an event's object.
OBJECT_FIELDS = (
    "id", "object", "mode", "payment_status", "status", "currency", "amount", "amount_total", "amount_refunded",
    "amount_paid", "metadata", "payment_intent", "latest_charge", "charge", "customer", "subscription",
    "setup_intent", "payment_method", "last_payment_error", "receipt_url", "client_reference_id", "lines",
    "period_start", "period_end", "current_period_start", "current_period_end", "cancel_at_period_end", "items",
    "parent", "subscription_details", "hosted_invoice_url", "billing_reason", "created", "expires_at", "url",
    "card", "invoice_settings", "default_payment_method",
)


def event_strategy(types: list[str]) -> st.SearchStrategy[Any]:
    """Stripe-shaped events (a known type, an object with the fields handlers
    read, each of any JSON type), and arbitrary JSON now and then."""
    plausible = st.fixed_dictionaries(
        {"id": st.from_regex(r"\Aevt_[a-z0-9]{8}\Z"), "type": st.sampled_from(types), "object": st.just("event"),
         "created": st.integers(0, 4_000_000_000),
         "data": st.fixed_dictionaries({"object": st.fixed_dictionaries({}, optional=dict.fromkeys(OBJECT_FIELDS, _JSON))})},
        optional={"livemode": st.booleans()},
    )
    return st.one_of(plausible, plausible, plausible, _JSON)


@pytest.fixture
def webhook_service(db_kind: str, tmp_path: Path) -> Iterator[Service]:
    # Stripe "configured" at a closed port: no handler may need to call it.
    svc = Service(db_kind, tmp_path, stripe_api_key="sk_test_fuzz", stripe_webhook_secret=WEBHOOK_SECRET,
                  stripe_api_base="http://127.0.0.1:9")
    try:
        yield svc
    finally:
        svc.close()


def test_fuzz_signed_webhooks(webhook_service: Service) -> None:
    """Correctly signed bodies of every shape: 200 or 400, never a 5xx or a
    traceback; a 400 stores nothing."""
    import httpx

    from server.payments.webhooks import HANDLED_EVENTS

    svc = webhook_service
    assert svc.server.app is not None
    types = sorted({*HANDLED_EVENTS, *svc.server.app.stripe_events.types, "customer.updated"})
    url = f"{svc.server.http_base}/webhooks/stripe"
    log = ServerLog()
    logging.getLogger().addHandler(log)
    statuses: set[int] = set()

    def stored() -> int:
        async def count() -> int:
            from sqlalchemy import text

            assert svc.server.app is not None
            async with svc.server.read() as conn:
                return int((await conn.execute(text("SELECT count(*) FROM webhook_events"))).scalar_one())

        return int(svc.run(count()))

    try:
        with httpx.Client(timeout=10) as http:

            @settings(max_examples=WEBHOOK_EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(ev=event_strategy(types))
            def one(ev: Any) -> None:
                body = json.dumps(ev).encode()
                before, logged = stored(), len(log.bad)
                r = http.post(url, content=body, headers={"Content-Type": "application/json", "Stripe-Signature": sign(body, WEBHOOK_SECRET)})
                statuses.add(r.status_code)
                assert r.status_code in (200, 400), f"{r.status_code} {r.text[:200]} for {body[:1500]!r}"
                if r.status_code == 400:
                    assert stored() == before, f"a refused event was stored: {body[:1500]!r}"
                new = [b for b in log.bad[logged:] if "amount mismatch" not in b]
                assert not new, f"logged {new[:3]} for {body[:1500]!r}"

            one()
    finally:
        logging.getLogger().removeHandler(log)
    assert statuses == {200, 400}, statuses
    assert svc.audit() == []
