"""Server reflection under both names clients use: `grpc.reflection.v1` and `v1alpha`.

grpcio-reflection implements only `grpc.reflection.v1alpha`; grpcurl and current gRPC tooling
ask `grpc.reflection.v1` first. The v1 protocol is v1alpha under another package name with the
same messages, field for field, so one servicer answers both: the v1 method decodes and encodes
with the v1alpha message classes (identical bytes on the wire), and a v1 file descriptor,
derived from grpcio-reflection's own v1alpha one, is added to the descriptor pool so that
reflection describes the v1 service too.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["V1_SERVICE", "V1ALPHA_SERVICE", "enable_reflection"]

V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE, _V1_PACKAGE = "grpc.reflection.v1alpha", "grpc.reflection.v1"


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on `server`, listing `service_names` and themselves."""
    _add_v1_descriptor()
    names = (*service_names, V1_SERVICE, V1ALPHA_SERVICE)
    servicer = reflection.aio.ReflectionServicer(names)
    for service in (V1ALPHA_SERVICE, V1_SERVICE):
        handlers = {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def _add_v1_descriptor() -> None:
    """Put `grpc/reflection/v1/reflection.proto` in the default pool (unless something has)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    proto.ParseFromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    proto.name, proto.package = _V1_FILE, _V1_PACKAGE
    proto.ClearField("options")  # v1alpha's Java/Go package options name v1alpha
    old, new = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:  # message and enum fields only
                field.type_name = field.type_name.replace(old, new, 1)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new, 1)
            method.output_type = method.output_type.replace(old, new, 1)
    pool.Add(proto)
