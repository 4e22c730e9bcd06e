"""Server reflection under both names clients ask for: `grpc.reflection.v1`
(buf curl tries it first, grpc-js clients ask only for it) and
`grpc.reflection.v1alpha` (grpcurl 1.8). grpcio-reflection ships only
v1alpha; the v1 messages are wire-identical, so one servicer answers both, and
a v1 copy of the reflection proto's descriptor lets clients describe it too."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    fdp = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(fdp)
    fdp.name = _V1_FILE
    fdp.package = "grpc.reflection.v1"
    for message in fdp.message_type:
        for field in message.field:
            if field.type_name.startswith(".grpc.reflection.v1alpha."):
                field.type_name = ".grpc.reflection.v1." + field.type_name.rsplit(".", 1)[-1]
    for service in fdp.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    fdp.ClearField("options")
    pool.Add(fdp)


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves reflection of `service_names` (plus both reflection services) on `server`."""
    pool = descriptor_pool.Default()
    _register_v1_descriptor(pool)
    servicer = reflection.aio.ReflectionServicer((*service_names, V1_SERVICE, V1ALPHA_SERVICE), pool=pool)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": info})
            for name in (V1_SERVICE, V1ALPHA_SERVICE)
        )
    )
