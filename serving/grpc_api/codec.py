"""Protobuf messages to and from the data plane's plain types."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cnnzoo.errors import InvalidInput, quoted
from cnnzoo.protos import grpc_service_pb2, zoo_pb2
from cnnzoo.serving.shared_memory import RegionStatus
from cnnzoo.serving.stats import BatchSizeStats, Duration, ModelStats
from cnnzoo.serving.types import (
    ClassifyResult,
    ExplainResult,
    IndexEntry,
    InferInput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelSummary,
    RequestedOutput,
    SharedMemoryRef,
)

__all__ = [
    "classify_response_to_pb",
    "explain_response_to_pb",
    "unit_position",
    "infer_request_from_pb",
    "infer_response_to_pb",
    "model_metadata_to_pb",
    "model_statistics_to_pb",
    "model_summaries_to_pb",
    "repository_index_to_pb",
    "shared_memory_status_to_pb",
]

# Which InferTensorContents field carries each datatype's typed values.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# Triton's tensor parameters naming a shared-memory region.
_REGION, _OFFSET, _BYTE_SIZE = (
    "shared_memory_region",
    "shared_memory_offset",
    "shared_memory_byte_size",
)


def infer_request_from_pb(request: grpc_service_pb2.ModelInferRequest) -> InferRequest:
    """Raises InvalidInput for malformed requests; never returns None.

    As in Triton, `raw_input_contents` holds one entry per input that is not in shared memory.
    """
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=_inputs(request),
        outputs=[_requested_output(o) for o in request.outputs] if request.outputs else [],
        timeout_us=_timeout(request.parameters) if request.parameters else 0,
    )


def _inputs(request: grpc_service_pb2.ModelInferRequest) -> list[InferInput]:
    raw = request.raw_input_contents
    tensors = request.inputs
    # Only a tensor with parameters can name a shared-memory region.
    regions = [_shared_memory(t.name, t.parameters) if t.parameters else None for t in tensors]
    carried = regions.count(None)
    if raw and len(raw) != carried:
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {carried} inputs that are not in "
            "shared memory; send one entry per such input, in order"
        )
    inputs = []
    next_raw = 0
    for tensor, region in zip(tensors, regions, strict=True):
        shape = tuple(tensor.shape)
        if region is not None:
            inputs.append(InferInput(tensor.name, tensor.datatype, shape, shared_memory=region))
        elif raw:
            if tensor.HasField("contents"):
                # KServe and Triton refuse the mix instead of ignoring one of them
                raise InvalidInput(
                    f"input {quoted(tensor.name)} has typed contents and the request has "
                    f"raw_input_contents; send the data of model {quoted(request.model_name)} "
                    "in one of them, not both"
                )
            inputs.append(InferInput(tensor.name, tensor.datatype, shape, raw[next_raw]))
            next_raw += 1
        else:
            field = _CONTENTS_FIELD.get(tensor.datatype) if tensor.HasField("contents") else None
            values = getattr(tensor.contents, field) if field else None
            inputs.append(InferInput(tensor.name, tensor.datatype, shape, values=values))
    return inputs


def _requested_output(
    output: grpc_service_pb2.ModelInferRequest.InferRequestedOutputTensor,
) -> RequestedOutput:
    parameters = output.parameters
    if not parameters:  # the common case: the output by name alone
        return RequestedOutput(output.name)
    return RequestedOutput(
        output.name,
        _classification(output.name, parameters),
        _shared_memory(output.name, parameters, output=True),
    )


def _shared_memory(
    name: str, parameters: Mapping[str, grpc_service_pb2.InferParameter], output: bool = False
) -> SharedMemoryRef | None:
    """Triton's `shared_memory_region` / `_offset` / `_byte_size` tensor parameters."""
    if not parameters:
        return None
    region = parameters.get(_REGION)
    offset = parameters.get(_OFFSET)
    size = parameters.get(_BYTE_SIZE)
    if region is None:
        if offset is not None or size is not None:
            raise InvalidInput(
                f"tensor {name!r} has shared_memory_offset or shared_memory_byte_size without "
                "shared_memory_region"
            )
        return None
    if region.WhichOneof("parameter_choice") != "string_param":
        raise InvalidInput(f"parameter {_REGION!r} of tensor {name!r} must be a string")
    if size is None:
        raise InvalidInput(f"tensor {name!r} names a shared-memory region without {_BYTE_SIZE!r}")
    for key, param in ((_OFFSET, offset), (_BYTE_SIZE, size)):
        if param is not None and param.WhichOneof("parameter_choice") != "int64_param":
            raise InvalidInput(f"parameter {key!r} of tensor {name!r} must be an int64")
    return SharedMemoryRef(
        region.string_param,
        offset.int64_param if offset is not None else 0,
        size.int64_param,
        output,
    )


def _timeout(parameters: Mapping[str, grpc_service_pb2.InferParameter]) -> int:
    """Triton's request parameter `timeout` (microseconds; 0: none)."""
    param = parameters.get("timeout") if parameters else None
    if param is None:
        return 0
    choice = param.WhichOneof("parameter_choice")
    if choice not in ("int64_param", "uint64_param") or getattr(param, choice) < 0:
        raise InvalidInput("request parameter 'timeout' must be a number of microseconds >= 0")
    return int(getattr(param, choice))


def _classification(name: str, parameters: Mapping[str, grpc_service_pb2.InferParameter]) -> int:
    if "classification" not in parameters:
        return 0
    param = parameters["classification"]
    choice = param.WhichOneof("parameter_choice")
    value = None
    if choice in ("int64_param", "uint64_param"):
        value = getattr(param, choice)
    elif choice == "string_param":
        try:
            value = int(param.string_param)
        except ValueError:  # also digits int() does not take, such as "²"
            value = None
    if value is None:
        raise InvalidInput(
            f"parameter 'classification' of output {quoted(name)} must be an integer class count"
        )
    if value < 1:
        raise InvalidInput(
            f"parameter 'classification' of output {quoted(name)} must be >= 1, got {value}"
        )
    return int(value)


def infer_response_to_pb(response: InferResponse) -> grpc_service_pb2.ModelInferResponse:
    tensor = grpc_service_pb2.ModelInferResponse.InferOutputTensor
    return grpc_service_pb2.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=[tensor(name=o.name, datatype=o.datatype, shape=o.shape) for o in response.outputs],
        raw_output_contents=[o.raw for o in response.outputs],
    )


def shared_memory_status_to_pb(
    regions: Sequence[RegionStatus],
) -> grpc_service_pb2.SystemSharedMemoryStatusResponse:
    status = grpc_service_pb2.SystemSharedMemoryStatusResponse.RegionStatus
    return grpc_service_pb2.SystemSharedMemoryStatusResponse(
        regions={
            r.name: status(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
            for r in regions
        }
    )


def model_metadata_to_pb(metadata: ModelMetadata) -> grpc_service_pb2.ModelMetadataResponse:
    tensor = grpc_service_pb2.ModelMetadataResponse.TensorMetadata
    return grpc_service_pb2.ModelMetadataResponse(
        name=metadata.name,
        versions=list(metadata.versions),
        platform=metadata.platform,
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in metadata.inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in metadata.outputs],
    )


def _duration(d: Duration) -> grpc_service_pb2.StatisticDuration:
    return grpc_service_pb2.StatisticDuration(count=d.count, ns=d.ns)


def _batch(size: int, b: BatchSizeStats) -> grpc_service_pb2.InferBatchStatistics:
    return grpc_service_pb2.InferBatchStatistics(
        batch_size=size,
        compute_input=_duration(b.compute_input),
        compute_infer=_duration(b.compute_infer),
        compute_output=_duration(b.compute_output),
    )


def model_statistics_to_pb(stats: Sequence[ModelStats]) -> grpc_service_pb2.ModelStatisticsResponse:
    return grpc_service_pb2.ModelStatisticsResponse(
        model_stats=[
            grpc_service_pb2.ModelStatistics(
                name=s.model,
                version=s.version,
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                inference_stats=grpc_service_pb2.InferStatistics(
                    success=_duration(s.success),
                    fail=_duration(s.fail),
                    queue=_duration(s.queue),
                    compute_input=_duration(s.compute_input),
                    compute_infer=_duration(s.compute_infer),
                    compute_output=_duration(s.compute_output),
                ),
                batch_stats=[_batch(size, b) for size, b in sorted(s.batches.items())],
            )
            for s in stats
        ]
    )


def classify_response_to_pb(result: ClassifyResult) -> zoo_pb2.ClassifyResponse:
    return zoo_pb2.ClassifyResponse(
        model=result.model,
        version=result.version,
        results=[
            zoo_pb2.ImageClassification(
                predictions=[
                    zoo_pb2.ClassPrediction(index=p.index, label=p.label, probability=p.probability)
                    for p in predictions
                ]
            )
            for predictions in result.results
        ],
    )


def model_summaries_to_pb(models: Sequence[ModelSummary]) -> zoo_pb2.ListModelsResponse:
    return zoo_pb2.ListModelsResponse(
        models=[
            zoo_pb2.ModelSummary(
                name=m.name,
                version=m.version,
                versions=list(m.versions),
                ready=m.ready,
                state=m.state,
                reason=m.reason,
                zoo_entry=m.zoo_entry,
                dataset=m.dataset,
                num_classes=m.num_classes,
                input_shape=list(m.input_shape),
                execution_provider=m.execution_provider,
                max_batch_size=m.max_batch_size,
            )
            for m in models
        ]
    )


def explain_response_to_pb(result: ExplainResult) -> zoo_pb2.ExplainResponse:
    attribution = result.attribution
    return zoo_pb2.ExplainResponse(
        model=result.model,
        version=result.version,
        method=result.method,
        target=result.target,
        label=result.label,
        score=result.score,
        png=result.png,
        shape=list(attribution.shape),
        attribution=attribution.ravel().tolist(),
        warnings=list(result.warnings),
        quality=result.quality or {},
        unit_position=list(result.unit_position or ()),
        unit_activation=result.unit_activation,
    )


def unit_position(values: Sequence[int]) -> tuple[int, int] | None:
    """ExplainRequest.position: empty (the strongest) or (y, x)."""
    if not values:
        return None
    if len(values) != 2:
        raise InvalidInput(f"position takes (y, x), got {len(values)} numbers")
    return int(values[0]), int(values[1])


def repository_index_to_pb(
    entries: Sequence[IndexEntry],
) -> grpc_service_pb2.RepositoryIndexResponse:
    index = grpc_service_pb2.RepositoryIndexResponse.ModelIndex
    return grpc_service_pb2.RepositoryIndexResponse(
        models=[
            index(name=e.name, version=e.version, state=e.state, reason=e.reason) for e in entries
        ]
    )
