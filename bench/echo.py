"""The baseline: a bare grpc.aio unary server answering UsageService/Spend with
a canned SpendResponse of the real size. No interceptors, no database.

python -m bench.echo PORT RESPONSE_HEX
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from flownexus.billing.v1 import usage_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from bench.common import install_loop


async def serve(port: int, response: usage_pb2.SpendResponse) -> None:
    async def spend(request: usage_pb2.SpendRequest, context: grpc.aio.ServicerContext) -> usage_pb2.SpendResponse:
        return response

    handler = grpc.method_handlers_generic_handler(
        "flownexus.billing.v1.UsageService",
        {
            "Spend": grpc.unary_unary_rpc_method_handler(
                spend,
                request_deserializer=usage_pb2.SpendRequest.FromString,
                response_serializer=usage_pb2.SpendResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    hs = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    await hs.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    install_loop()
    port, raw = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
    asyncio.run(serve(port, usage_pb2.SpendResponse.FromString(raw)))


if __name__ == "__main__":
    main()
