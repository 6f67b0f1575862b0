"""Thin gRPC servicers: decode the request, call the data plane, encode the answer.

The KServe v2 messages have no field for the execution provider, so ServerMetadata and
ModelMetadata report it in the response's trailing metadata (`cnnzoo-execution-provider`);
ListModels has it as a field.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cnnzoo.errors import NotFound
from cnnzoo.protos import grpc_service_pb2 as pb
from cnnzoo.protos import grpc_service_pb2_grpc, zoo_pb2, zoo_pb2_grpc
from cnnzoo.serving.dataplane import DataPlane
from cnnzoo.serving.grpc_api import codec
from cnnzoo.serving.grpc_api.status import grpc_errors
from cnnzoo.serving.grpc_api.streaming import stream_infer
from cnnzoo.serving.grpc_api.unimplemented import answer_unimplemented

__all__ = ["InferenceServicer", "PROVIDER_METADATA_KEY", "ZooServicer", "deadline_of"]

PROVIDER_METADATA_KEY = "cnnzoo-execution-provider"

Context = grpc.aio.ServicerContext[Any, Any]


def deadline_of(context: Context) -> float | None:
    """The caller's deadline as `time.monotonic()` seconds (None: the caller set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


# What a client can use instead of each RPC this server leaves out.
_INSTEAD = {
    "CudaSharedMemoryRegister": "use system shared memory (SystemSharedMemoryRegister) or send "
    "tensors in the request itself (raw_input_contents)",
    "TraceSetting": "per-model latencies are in ModelStatistics and on the metrics endpoint "
    "(/metrics)",
    "LogSettings": "set the log level when starting the server (--log-level or CNNZOO_LOG_LEVEL)",
}


@answer_unimplemented(
    pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    _INSTEAD,
    default="ServerMetadata lists the protocol extensions it supports",
)
class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService` (KServe v2 / Open Inference Protocol); the RPCs it
    does not define answer UNIMPLEMENTED (see `answer_unimplemented`)."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    @grpc_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._plane.live())

    @grpc_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.ready())

    @grpc_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        ready = self._plane.model_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @grpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        name, version, extensions = self._plane.server_metadata()
        providers = ",".join(self._plane.execution_providers())
        context.set_trailing_metadata(((PROVIDER_METADATA_KEY, providers),))
        return pb.ServerMetadataResponse(name=name, version=version, extensions=list(extensions))

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        metadata = await self._plane.model_metadata(request.name, request.version)
        context.set_trailing_metadata(((PROVIDER_METADATA_KEY, metadata.execution_provider),))
        return codec.model_metadata_to_pb(metadata)

    @grpc_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        config = await self._plane.model_config(request.name, request.version)
        return pb.ModelConfigResponse(config=config)

    @grpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        stats = self._plane.model_statistics(request.name, request.version)
        return codec.model_statistics_to_pb(stats)

    @grpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        entries = self._plane.repository_index(request.repository_name, request.ready)
        return codec.repository_index_to_pb(entries)

    @grpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        await self._plane.load_model(
            request.repository_name, request.model_name, list(request.parameters)
        )
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        await self._plane.unload_model(request.repository_name, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @grpc_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        response = await self._plane.infer(
            codec.infer_request_from_pb(request), deadline=deadline_of(context)
        )
        return codec.infer_response_to_pb(response)

    @grpc_errors
    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> None:
        await stream_infer(self._plane, context, deadline_of(context))

    @grpc_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._plane.shared_memory_registry().register(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    @grpc_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> pb.SystemSharedMemoryStatusResponse:
        regions = self._plane.shared_memory_registry().status(request.name)
        return codec.shared_memory_status_to_pb(regions)

    @grpc_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._plane.shared_memory_registry().unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    # No CUDA shared-memory region can be registered here, so (as in Triton without GPUs) the
    # status lists none and unregistering succeeds: perf_analyzer and tritonclient unregister
    # both kinds when they finish.
    @grpc_errors
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Context
    ) -> pb.CudaSharedMemoryStatusResponse:
        if request.name:
            raise NotFound(f"no CUDA shared-memory region {request.name!r} is registered")
        return pb.CudaSharedMemoryStatusResponse()

    @grpc_errors
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Context
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()


class ZooServicer(zoo_pb2_grpc.ZooServicer):
    """`cnnzoo.v1.Zoo`: classify and explain encoded images, list models."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    @grpc_errors
    async def Classify(
        self, request: zoo_pb2.ClassifyRequest, context: Context
    ) -> zoo_pb2.ClassifyResponse:
        result = await self._plane.classify(
            request.model,
            request.version,
            request.images,
            request.top_k,
            deadline=deadline_of(context),
        )
        return codec.classify_response_to_pb(result)

    @grpc_errors
    async def ListModels(
        self, request: zoo_pb2.ListModelsRequest, context: Context
    ) -> zoo_pb2.ListModelsResponse:
        return codec.model_summaries_to_pb(self._plane.list_models())

    @grpc_errors
    async def Explain(
        self, request: zoo_pb2.ExplainRequest, context: Context
    ) -> zoo_pb2.ExplainResponse:
        target = request.target if request.HasField("target") else None
        result = await self._plane.explain(
            request.model,
            request.version,
            request.image,
            request.method,
            target,
            deadline=deadline_of(context),
            layer=request.layer,
            quality=request.quality,
            channel=request.channel if request.HasField("channel") else None,
            position=codec.unit_position(request.position),
        )
        return codec.explain_response_to_pb(result)
