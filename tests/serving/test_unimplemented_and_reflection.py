"""Left-out RPCs answer UNIMPLEMENTED with advice, logged once; reflection v1 and v1alpha."""

from __future__ import annotations

import grpc
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

# (tritonclient call, RPC name, a fragment of the advice)
LEFT_OUT = [
    (
        lambda c: c.register_cuda_shared_memory("r", b"\0" * 64, 0, 64),
        "CudaSharedMemoryRegister",
        "SystemSharedMemoryRegister",
    ),
    (lambda c: c.get_trace_settings(), "TraceSetting", "ModelStatistics"),
    (lambda c: c.update_log_settings({"log_info": True}), "LogSettings", "--log-level"),
]


def test_left_out_rpcs_answer_unimplemented_naming_the_rpc_and_an_alternative(server):
    client = triton.InferenceServerClient(server.target)
    try:
        for call, rpc, advice in LEFT_OUT:
            for _ in range(3):  # repeated calls: still one log line per RPC
                with pytest.raises(InferenceServerException) as info:
                    call(client)
                assert info.value.status() == "StatusCode.UNIMPLEMENTED", info.value
                message = info.value.message()
                assert f"inference.GRPCInferenceService/{rpc} is not implemented" in message
                assert advice in message and "Method not implemented" not in message
        assert client.is_server_ready()
    finally:
        client.close()
    log = server.log()
    assert "Traceback" not in log
    for _, rpc, _ in LEFT_OUT:
        lines = [line for line in log.splitlines() if f"/{rpc}, which is not implemented" in line]
        assert len(lines) == 1 and " WARNING " in lines[0], lines


def _v1_stub(channel: grpc.Channel):
    """A grpc.reflection.v1 client built from the v1 descriptor that the server itself serves
    (fetched through v1alpha), so the test depends on nothing but the two protocols."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName("grpc.reflection.v1.ServerReflection")
    method = service.methods_by_name["ServerReflectionInfo"]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    return call, request_cls


def test_reflection_v1_and_v1alpha_list_and_describe(channel):
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    expected = {
        "inference.GRPCInferenceService",
        "cnnzoo.v1.Zoo",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert set(ProtoReflectionDescriptorDatabase(channel).get_services()) == expected

    call, request_cls = _v1_stub(channel)
    listing, described = call(
        iter(
            [
                request_cls(list_services=""),
                request_cls(file_containing_symbol="inference.GRPCInferenceService"),
            ]
        ),
        timeout=10,
    )
    assert {s.name for s in listing.list_services_response.service} == expected
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    (service_file,) = [f for f in files if f.name == "grpc_service.proto"]
    methods = {m.name for s in service_file.service for m in s.method}
    assert {"ModelInfer", "RepositoryIndex", "ModelStatistics"} <= methods
