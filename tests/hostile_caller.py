"""A hostile caller in a process of its own (so that its client work does not
share the test's event loop with the server): one user token opens idle
WatchBalance streams over several connections, then keeps many more Spends
outstanding than its in-flight cap. Prints "ready" once its streams are open, then, when
stdin closes, one JSON line with the status codes it got.

python -m tests.hostile_caller TARGET TOKEN STREAMS FLOOD   (from the repository root;
as a module, so that tests/grpc/ cannot shadow the grpc library)
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys

import grpc
from flownexus.billing.v1 import balance_pb2, balance_pb2_grpc, usage_pb2, usage_pb2_grpc


async def main(target: str, token: str, streams: int, flood: int) -> None:
    md = (("authorization", f"Bearer {token}"),)
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(4)]
    stubs = [balance_pb2_grpc.BalanceServiceStub(ch) for ch in channels]
    usage = [usage_pb2_grpc.UsageServiceStub(ch) for ch in channels]
    codes: collections.Counter[str] = collections.Counter()
    opened = []

    async def open_stream(i: int) -> None:
        call = stubs[i % len(stubs)].WatchBalance(balance_pb2.WatchBalanceRequest(), metadata=md)
        try:
            await asyncio.wait_for(call.read(), 60)  # the snapshot: the stream is open
            opened.append(call)
            codes["stream:OK"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[f"stream:{exc.code().name}:{_reason(exc)}"] += 1

    await asyncio.gather(*(open_stream(i) for i in range(streams)))
    stop = asyncio.Event()

    async def hammer(i: int) -> None:
        stub = usage[i % len(usage)]
        n = 0
        while not stop.is_set():
            n += 1
            try:
                # Spends beyond the balance wait for a group commit (they stay
                # in flight) and are then refused: the caller holds its
                # in-flight cap without moving credits or waking its streams.
                req = usage_pb2.SpendRequest(amount_millicredits=10**9, request_id=f"h{i}-{n}")
                await stub.Spend(req, metadata=md, timeout=10)
                codes["unary:OK"] += 1
            except grpc.aio.AioRpcError as exc:
                reason = _reason(exc)
                codes[f"unary:{exc.code().name}:{reason}"] += 1
                if reason != "INSUFFICIENT_CREDITS":
                    await asyncio.sleep(0.01)  # refused at its cap: retries at once, nearly

    workers = [asyncio.create_task(hammer(i)) for i in range(flood)] if flood else []
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    await asyncio.gather(*workers)
    for call in opened:
        call.cancel()
    for ch in channels:
        await ch.close()
    print(json.dumps(codes), flush=True)


def _reason(exc: grpc.aio.AioRpcError) -> str:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
