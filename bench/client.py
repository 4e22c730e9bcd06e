"""Load generator process: `python -m bench.client CONFIG_JSON`; prints one
JSON result line on stdout.

The result is written as JSON to the file named by `out`.

Modes:
- unary: `concurrency` workers spread over `channels` connections call one
  method (spend | check | tiers | batch, a SpendBatch of `batch` items) in a closed loop; after `warmup` seconds, every
  completed call within `duration` seconds is counted and timed. With `calls` instead (a fixed count, for
  callgrind's windows: bench/callgrind.py), `warmup_calls` calls first, then it prints "READY" and waits for a
  line on stdin, makes exactly `calls` calls (all counted), prints "DONE" and waits for a line before closing.
- recorder: `producers` tasks emit single spends through one UsageRecorder
  (client package) for `duration` seconds after `warmup`.
- watch: opens `streams` WatchBalance streams (users round-robin), prints
  "READY" once every stream has its snapshot, then records for each TRANSFER
  event the delay from the transfer's commit time to its delivery, until each
  stream saw `expect` events or `timeout` passes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from flownexus.billing.v1 import (
    balance_pb2,
    balance_pb2_grpc,
    common_pb2,
    usage_pb2,
    usage_pb2_grpc,
)

from bench.common import channel, install_loop

CLIENT_SRC = str(Path(__file__).resolve().parents[1] / "clients" / "python" / "src")


async def unary(cfg: dict[str, Any]) -> dict[str, Any]:
    chans = [channel(cfg["target"]) for _ in range(cfg["channels"])]
    for ch in chans:
        await ch.channel_ready()
    md = (("authorization", f"Bearer {cfg['token']}"),)
    users: list[str] = cfg.get("users") or [""]
    # Spends through scoped keys: each user's key (a service names it on each spend).
    keys: dict[str, str] = cfg.get("keys") or {}
    mode = cfg["method"]
    tag = cfg.get("tag", "c")
    # Spends priced from usage ({"meter", "quantity", "dimensions"}) instead of an amount.
    priced = common_pb2.Usage(**cfg["usage"]) if cfg.get("usage") else None
    amount = 0 if priced is not None else cfg.get("amount", 1)
    lat: list[float] = []
    codes: Counter[str] = Counter()
    item_errors: Counter[str] = Counter()
    items = [0]  # spends applied (a SpendBatch call counts its items)
    loop = asyncio.get_running_loop()

    def caller(w: int) -> Any:
        ch = chans[w % len(chans)]
        if mode == "tiers":  # no database: the cost of the server's gRPC stack and interceptors
            from flownexus.billing.v1 import tier_pb2, tier_pb2_grpc

            stub_t = tier_pb2_grpc.TierServiceStub(ch)
            call: Any = lambda i: stub_t.ListTiers(tier_pb2.ListTiersRequest(), metadata=md)  # noqa: E731
        elif mode == "check":
            stub_b = balance_pb2_grpc.BalanceServiceStub(ch)
            call = lambda i: stub_b.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=md)  # noqa: E731
        elif mode == "batch":  # SpendBatch of `batch` items; an item refused counts against the items
            stub_u = usage_pb2_grpc.UsageServiceStub(ch)
            rng_b = random.Random(w)
            size = cfg["batch"]

            async def call(i: int) -> Any:
                picked = [users[rng_b.randrange(len(users))] for _ in range(size)]
                req = usage_pb2.SpendBatchRequest(requests=[
                    usage_pb2.SpendRequest(
                        user_id=u, amount_millicredits=amount, usage=priced,
                        request_id=f"{tag}-{w}-{i}-{j}", category="bench", key_id=keys.get(u, ""),
                    )
                    for j, u in enumerate(picked)
                ])
                r = await stub_u.SpendBatch(req, metadata=md)
                refused = sum(1 for x in r.results if x.HasField("error"))
                if refused:
                    item_errors[r.results[0].error.reason or "ERROR"] += refused
                return len(r.results) - refused
        else:
            stub = usage_pb2_grpc.UsageServiceStub(ch)
            rng = random.Random(w)

            def call(i: int) -> Any:
                user = users[rng.randrange(len(users))]
                req = usage_pb2.SpendRequest(
                    user_id=user,
                    amount_millicredits=amount,
                    usage=priced,
                    request_id=f"{tag}-{w}-{i}",
                    category="bench",
                    key_id=keys.get(user, ""),
                )
                return stub.Spend(req, metadata=md)
        return call

    calls = [caller(w) for w in range(cfg["concurrency"])]
    sent = [0] * len(calls)  # each worker's calls so far: its request_ids

    async def worker(w: int, more: Callable[[], bool], counted: Callable[[float], bool]) -> None:
        call = calls[w]
        while more():
            now = loop.time()
            sent[w] += 1
            began = time.perf_counter()
            done = 1
            try:
                done = await call(sent[w]) if mode == "batch" else (await call(sent[w]), 1)[1]
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            took = time.perf_counter() - began
            if counted(now):
                lat.append(took)
                codes[code] += 1
                items[0] += done if code == "OK" else 0

    async def workers(more: Callable[[], bool], counted: Callable[[float], bool]) -> None:
        await asyncio.gather(*(worker(w, more, counted) for w in range(len(calls))))

    if "calls" in cfg:  # a fixed count of calls, between the orchestrator's signals
        await workers(_budget(cfg["warmup_calls"]), lambda now: False)
        await _signal("READY")
        began = time.perf_counter()
        await workers(_budget(cfg["calls"]), lambda now: True)
        seconds = time.perf_counter() - began
        await _signal("DONE")
    else:
        seconds = cfg["duration"]
        start = loop.time() + cfg["warmup"]
        stop = start + seconds
        await workers(lambda: loop.time() < stop, lambda now: start <= now and loop.time() <= stop)
    for ch in chans:
        await ch.close()
    return {
        "completed": len(lat), "items": items[0], "seconds": seconds, "codes": dict(codes), "latencies": lat,
        "item_errors": dict(item_errors),
    }


def _budget(n: int) -> Callable[[], bool]:
    """True `n` times in all, for the workers sharing it: a fixed count of calls."""
    left = [n]

    def more() -> bool:
        left[0] -= 1
        return left[0] >= 0

    return more


async def _signal(word: str) -> None:
    """Tells the orchestrator (a line on stdout) and waits for its answer (a line on stdin)."""
    print(word, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)




async def recorder(cfg: dict[str, Any]) -> dict[str, Any]:
    """`producers` tasks emit single spends through one UsageRecorder (one
    channel, as one service process would): each producer queues a spend,
    keeps its future and goes on (the recorder's back-pressure paces it).
    Latency: from the call of spend() to the durable result."""
    try:
        from flownexus_billing_client import BillingClient, UsageRecorder
    except ModuleNotFoundError:  # from a checkout: clients/python/src is a source root (as for `server mcp`)
        sys.path.insert(0, CLIENT_SRC)
        from flownexus_billing_client import BillingClient, UsageRecorder

    users: list[str] = cfg["users"]
    lat: list[float] = []
    codes: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    start, stop = t0 + cfg["warmup"], t0 + cfg["warmup"] + cfg["duration"]
    async with BillingClient(cfg["target"], cfg["token"]) as billing:
        rec = UsageRecorder(
            billing, max_batch=cfg["max_batch"], flush_interval_ms=cfg["flush_ms"], max_queue=cfg["max_queue"],
            max_in_flight=cfg["in_flight"],
        )

        def finished(began: float, fut: asyncio.Future[Any]) -> None:
            if start <= loop.time() <= stop:
                lat.append(time.perf_counter() - began)
                codes["OK" if fut.exception() is None else type(fut.exception()).__name__] += 1

        async def producer(p: int) -> None:
            rng = random.Random(p)
            i = 0
            while loop.time() < stop:
                i += 1
                began = time.perf_counter()
                fut = await rec.spend(usage_pb2.SpendRequest(
                    user_id=users[rng.randrange(len(users))], amount_millicredits=1, request_id=f"{cfg['tag']}-{p}-{i}",
                    category="bench"))
                fut.add_done_callback(lambda f, b=began: finished(b, f))  # type: ignore[misc]
                await asyncio.sleep(0)

        await asyncio.gather(*(producer(p) for p in range(cfg["producers"])))
        await rec.close()
    return {
        "completed": len(lat), "items": codes["OK"], "seconds": cfg["duration"], "codes": dict(codes), "latencies": lat,
        "batches": rec.stats.batches, "retries": rec.stats.retries,
    }


async def watch(cfg: dict[str, Any]) -> dict[str, Any]:
    n, users = cfg["streams"], cfg["users"]
    chans = [channel(cfg["target"]) for _ in range(cfg["channels"])]
    md = (("authorization", f"Bearer {cfg['token']}"),)
    got = [0] * n
    delays: list[float] = []
    ready = 0
    all_ready = asyncio.Event()
    errors: Counter[str] = Counter()
    done = asyncio.Event()
    finished = 0
    gate = asyncio.Semaphore(cfg.get("open_concurrency", 100))

    async def one(i: int) -> None:
        nonlocal ready, finished
        stub = balance_pb2_grpc.BalanceServiceStub(chans[i % len(chans)])
        await gate.acquire()
        released = False
        try:
            call = stub.WatchBalance(balance_pb2.WatchBalanceRequest(user_id=users[i % len(users)]), metadata=md)
            async for msg in call:
                if msg.type == balance_pb2.BALANCE_EVENT_TYPE_SNAPSHOT and not released:
                    released = True
                    gate.release()
                    ready += 1
                    if ready == n:
                        all_ready.set()
                    continue
                if msg.type == balance_pb2.BALANCE_EVENT_TYPE_TRANSFER:
                    sent = msg.transaction.date.seconds + msg.transaction.date.nanos / 1e9
                    delays.append(time.time() - sent)
                    got[i] += 1
                    if got[i] == cfg["expect"]:
                        finished += 1
                        if finished == n:
                            done.set()
                        call.cancel()
                        return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                errors[exc.code().name] += 1
        except asyncio.CancelledError:
            pass
        finally:
            if not released:
                gate.release()

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    try:
        await asyncio.wait_for(all_ready.wait(), cfg["open_timeout"])
    except TimeoutError:
        pass
    print(json.dumps({"ready": ready}), flush=True)
    # The orchestrator now runs the spends; it tells us when to stop waiting.
    try:
        await asyncio.wait_for(done.wait(), cfg["timeout"])
    except TimeoutError:
        pass
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in chans:
        await ch.close()
    return {
        "streams": n,
        "ready": ready,
        "complete": sum(1 for g in got if g >= cfg["expect"]),
        "silent": sum(1 for g in got if g == 0),
        "events": sum(got),
        "errors": dict(errors),
        "delays": delays,
    }


def main() -> None:
    install_loop()
    cfg = json.loads(sys.argv[1])
    run = {"watch": watch, "recorder": recorder}.get(cfg["method"], unary)
    result = asyncio.run(run(cfg))
    # To a file: a large line on a pipe that the event loop made non-blocking gets cut.
    with open(cfg["out"], "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
