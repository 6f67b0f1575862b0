"""Complete a model's config.pbtxt from its ONNX file, as Triton's ONNX Runtime backend does.

Triton loads an ONNX model whose config.pbtxt leaves out what the model itself says: missing
inputs and outputs (name, data type, dims) are taken from the graph, missing dims of a listed
tensor too, and a model whose every tensor has a dynamic first dimension gets Triton's
`default-max-batch-size` of 4 with dynamic batching when the config sets no max_batch_size. What
the config does say must agree with the graph (names, data types, fixed dims); a disagreement
refuses the version with both values named. The completed config is what the server runs and
what the ModelConfig RPC answers, as in Triton.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from cnnzoo.errors import IntegrityError
from cnnzoo.protos import model_config_pb2
from cnnzoo.serving.spec import TensorSpec

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "GraphTensor", "complete_config", "config_of"]

DEFAULT_MAX_BATCH_SIZE = 4  # Triton's --backend-config=default-max-batch-size
PLATFORM = "onnxruntime_onnx"

# A config's inputs or its outputs.
_Declared: TypeAlias = (
    RepeatedCompositeFieldContainer[model_config_pb2.ModelInput]
    | RepeatedCompositeFieldContainer[model_config_pb2.ModelOutput]
)

# ONNX Runtime's tensor type names -> config data types.
_DATA_TYPES = {
    "tensor(bool)": model_config_pb2.TYPE_BOOL,
    "tensor(uint8)": model_config_pb2.TYPE_UINT8,
    "tensor(uint16)": model_config_pb2.TYPE_UINT16,
    "tensor(uint32)": model_config_pb2.TYPE_UINT32,
    "tensor(uint64)": model_config_pb2.TYPE_UINT64,
    "tensor(int8)": model_config_pb2.TYPE_INT8,
    "tensor(int16)": model_config_pb2.TYPE_INT16,
    "tensor(int32)": model_config_pb2.TYPE_INT32,
    "tensor(int64)": model_config_pb2.TYPE_INT64,
    "tensor(float16)": model_config_pb2.TYPE_FP16,
    "tensor(float)": model_config_pb2.TYPE_FP32,
    "tensor(double)": model_config_pb2.TYPE_FP64,
    "tensor(string)": model_config_pb2.TYPE_STRING,
}


@dataclass(frozen=True)
class GraphTensor:
    """An input or output as the ONNX graph declares it (`shape`: -1 for a dynamic dim)."""

    name: str
    onnx_type: str
    shape: tuple[int, ...]

    @classmethod
    def from_ort(cls, node: object) -> GraphTensor:
        """From an onnxruntime `NodeArg` (symbolic and unknown dims become -1)."""
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)  # type: ignore[attr-defined]
        return cls(node.name, node.type, shape)  # type: ignore[attr-defined]


def complete_config(
    config: model_config_pb2.ModelConfig,
    inputs: Sequence[GraphTensor],
    outputs: Sequence[GraphTensor],
    *,
    model: str,
) -> list[str]:
    """Fill in `config` (in place) from the graph; returns what was filled in, for the log.

    Raises:
        IntegrityError: the config and the graph disagree (names, data types, dims).
    """
    filled: list[str] = []
    if not config.name:
        config.name = model
    if not config.platform and not config.backend:
        config.platform = PLATFORM
        filled.append(f"platform {PLATFORM}")
    batchable = all(t.shape and t.shape[0] == -1 for t in (*inputs, *outputs))
    if config.max_batch_size == 0 and batchable:
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        filled.append(f"max_batch_size {DEFAULT_MAX_BATCH_SIZE}")
        if not config.HasField("dynamic_batching") and not config.HasField("sequence_batching"):
            config.dynamic_batching.SetInParent()
            filled.append("dynamic_batching")
    for kind, declared, graph in (
        ("input", config.input, inputs),
        ("output", config.output, outputs),
    ):
        filled += _complete_tensors(kind, declared, graph, config.max_batch_size > 0, model)
    return filled


def _complete_tensors(
    kind: str,
    declared: _Declared,
    graph: Sequence[GraphTensor],
    batched: bool,
    model: str,
) -> list[str]:
    by_name = {t.name: t for t in graph}
    filled = []
    if not declared:
        for node in graph:
            declared.add(name=node.name, data_type=_data_type(node, model))
        filled.append(f"{kind}s {', '.join(t.name for t in graph)}")
    for entry in declared:
        tensor = by_name.get(entry.name)
        if tensor is None:
            raise IntegrityError(
                f"{model}: config.pbtxt names {kind} {entry.name!r}, but model.onnx has "
                f"{kind}s {', '.join(map(repr, by_name)) or 'none'}"
            )
        dtype = _data_type(tensor, model)
        if entry.data_type == model_config_pb2.TYPE_INVALID:
            entry.data_type = dtype
        elif entry.data_type != dtype:
            raise IntegrityError(
                f"{model}: {kind} {entry.name!r} is {_type_name(entry.data_type)} in config.pbtxt "
                f"but {_type_name(dtype)} in model.onnx"
            )
        shape = tensor.shape[1:] if batched else tensor.shape
        if batched and (not tensor.shape or tensor.shape[0] != -1):
            raise IntegrityError(
                f"{model}: max_batch_size is set, but {kind} {entry.name!r} of model.onnx has no "
                f"dynamic first (batch) dimension (shape {list(tensor.shape)})"
            )
        if entry.HasField("reshape"):
            continue  # the config's dims are the reshaped ones; the graph cannot check them
        if not entry.dims:
            entry.dims.extend(shape)
            filled.append(f"{kind} {entry.name} dims {list(shape)}")
        elif len(entry.dims) != len(shape) or any(
            d != g and d != -1 and g != -1 for d, g in zip(entry.dims, shape, strict=True)
        ):
            raise IntegrityError(
                f"{model}: {kind} {entry.name!r} has dims {list(entry.dims)} in config.pbtxt but "
                f"{list(shape)} in model.onnx{' (without the batch dimension)' if batched else ''}"
            )
    return filled


def _data_type(tensor: GraphTensor, model: str) -> model_config_pb2.DataType:
    try:
        return _DATA_TYPES[tensor.onnx_type]
    except KeyError:
        raise IntegrityError(
            f"{model}: model.onnx tensor {tensor.name!r} has type {tensor.onnx_type}, which "
            "the KServe v2 protocol cannot carry"
        ) from None


def _type_name(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


def config_of(
    name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], max_batch_size: int
) -> model_config_pb2.ModelConfig:
    """The config Triton would complete for a graph served with dynamic batching (`inputs`
    and `outputs` with their dims without the batch dimension)."""
    config = model_config_pb2.ModelConfig(
        name=name, platform=PLATFORM, max_batch_size=max_batch_size
    )
    config.dynamic_batching.SetInParent()
    for declared, tensors in ((config.input, inputs), (config.output, outputs)):
        for tensor in tensors:
            declared.add(
                name=tensor.name,
                data_type=model_config_pb2.DataType.Value(f"TYPE_{tensor.datatype}"),
                dims=list(tensor.dims),
            )
    return config
