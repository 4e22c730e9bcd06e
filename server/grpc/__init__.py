"""The gRPC edge shared by every domain: the call interceptor (auth, limits,
domain errors to status + ErrorInfo), request validation and proto conversion."""

from typing import TypeAlias

import grpc

Ctx: TypeAlias = grpc.aio.ServicerContext
