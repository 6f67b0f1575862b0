"""What the server needs to know about a model, read once from its config.pbtxt.

The data plane checks requests against a `ModelSpec` (plain dataclasses), so nothing below the
servicers touches protobuf messages on the hot path.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cnnzoo.errors import InvalidInput

if TYPE_CHECKING:  # the message types only: protobuf stays in the front ends
    from cnnzoo.protos.model_config_pb2 import ModelConfig, ModelInput, ModelOutput

__all__ = ["DATATYPES", "ModelSpec", "TensorSpec"]

# KServe v2 datatype names -> numpy element types (BYTES has no fixed-size element).
DATATYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}

# Triton's config DataType enum names differ from the protocol's datatype strings only here.
_CONFIG_TO_PROTOCOL = {"STRING": "BYTES"}


def protocol_datatype(config_type_name: str) -> str:
    """`TYPE_FP32` -> `FP32`, `TYPE_STRING` -> `BYTES`."""
    name = config_type_name.removeprefix("TYPE_")
    return _CONFIG_TO_PROTOCOL.get(name, name)


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, protocol datatype, dims without the batch dimension
    (`batched`: the model has one, max_batch_size >= 1; -1 in dims: any size), and the shape
    the graph itself has when config.pbtxt's `reshape` says it differs (without the batch)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    batched: bool = True
    reshape: tuple[int, ...] | None = None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(DATATYPES[self.datatype])

    @functools.cached_property
    def wire_dtype(self) -> np.dtype:
        """The element type of the protocol's raw bytes (little-endian `dtype`)."""
        wire: np.dtype = self.dtype.newbyteorder("<")
        return wire

    def shape_with_batch(self) -> list[int]:
        """The shape a request carries: -1 for the batch, then the dims (no batch: the dims)."""
        return [-1, *self.dims] if self.batched else list(self.dims)

    def accepts(self, dims: tuple[int, ...]) -> bool:
        """Whether a tensor's dims (without the batch) fit these (-1 takes any size)."""
        return len(dims) == len(self.dims) and all(
            want in (-1, got) for want, got in zip(self.dims, dims, strict=True)
        )


@dataclass(frozen=True)
class ModelSpec:
    """A served model's interface and scheduling settings."""

    name: str
    platform: str
    max_batch_size: int
    input: TensorSpec
    output: TensorSpec
    dynamic_batching: bool
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int  # dynamic_batching.default_queue_policy.max_queue_size (0: not set)
    instance_count: int
    parameters: Mapping[str, str]
    # model_metrics' buckets for nv_inference_first_response_histogram_ms (None: Triton's)
    histogram_buckets: tuple[float, ...] | None = None

    @property
    def batched(self) -> bool:
        """The model has a batch dimension (max_batch_size >= 1); without one each request is
        one whole input, run alone."""
        return self.max_batch_size > 0

    @classmethod
    def from_config(cls, config: ModelConfig) -> ModelSpec:
        """Build from a `model_config_pb2.ModelConfig` (as `cnnzoo.zoo.repository` returns it).

        Raises:
            InvalidInput: the config does not describe one input and one output.
        """
        if len(config.input) != 1 or len(config.output) != 1:
            raise InvalidInput(
                f"config.pbtxt of {config.name!r} declares {len(config.input)} inputs and "
                f"{len(config.output)} outputs; cnnzoo serves exactly one of each"
            )
        if config.max_batch_size < 0:
            raise InvalidInput(
                f"config.pbtxt of {config.name!r} has max_batch_size {config.max_batch_size}; "
                "it must be >= 0 (0: the model has no batch dimension)"
            )
        dtype_name = (
            type(config)
            .DESCRIPTOR.fields_by_name["input"]
            .message_type.fields_by_name["data_type"]
            .enum_type.values_by_number
        )

        def tensor(t: ModelInput | ModelOutput) -> TensorSpec:
            return TensorSpec(
                t.name,
                protocol_datatype(dtype_name[t.data_type].name),
                tuple(t.dims),
                batched=config.max_batch_size > 0,
                reshape=tuple(t.reshape.shape) if t.HasField("reshape") else None,
            )

        batching = config.HasField("dynamic_batching")
        instances = sum(g.count for g in config.instance_group) or 1
        return cls(
            name=config.name,
            platform=config.platform or "onnxruntime_onnx",
            max_batch_size=config.max_batch_size,
            input=tensor(config.input[0]),
            output=tensor(config.output[0]),
            dynamic_batching=batching,
            max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds
            if batching
            else 0,
            preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size)
            if batching
            else (),
            max_queue_size=config.dynamic_batching.default_queue_policy.max_queue_size
            if batching
            else 0,
            instance_count=instances,
            parameters={k: v.string_value for k, v in config.parameters.items()},
            histogram_buckets=_histogram_buckets(config),
        )


# instance_group.kind values of Triton's model_config.proto
_KIND_GPU = 1


def refuse_unsupported(config: ModelConfig, *, on_gpu: bool | None = None) -> None:
    """Refuse, with the reason, what a config.pbtxt asks for that this server does not do, so
    nothing Triton would honour is silently ignored (docs/serving.md, "Which repositories serve").

    `on_gpu`: whether the model's session runs on CUDA (None: not known yet; the
    `instance_group` kind is then not checked).

    Raises:
        UnsupportedModel: the first thing refused, naming the field and what to do instead.
    """
    from cnnzoo.errors import UnsupportedModel

    name = config.name or "the model"
    reasons = []
    backend = config.backend or ""
    if config.platform not in ("", "onnxruntime_onnx") or backend not in ("", "onnxruntime"):
        wrong_platform = config.platform not in ("", "onnxruntime_onnx")
        what = f"platform {config.platform!r}" if wrong_platform else f"backend {backend!r}"
        reasons.append(
            f"{what}: cnnzoo serves ONNX models on ONNX Runtime only (platform "
            "onnxruntime_onnx); serve it with Triton"
        )
    if config.HasField("sequence_batching"):
        reasons.append("sequence_batching: stateful models are not served; serve it with Triton")
    if config.HasField("ensemble_scheduling"):
        reasons.append("ensemble_scheduling: ensembles are not served; serve it with Triton")
    if config.default_model_filename not in ("", "model.onnx"):
        reasons.append(
            f"default_model_filename {config.default_model_filename!r}: the version's graph "
            "must be model.onnx"
        )
    if config.HasField("response_cache") and config.response_cache.enable:
        reasons.append("response_cache: responses are not cached; remove it to serve the model")
    if on_gpu is False and any(g.kind == _KIND_GPU for g in config.instance_group):
        reasons.append(
            "instance_group kind KIND_GPU: this server runs the model on the CPU (no usable "
            "CUDA device, or --device cpu); use KIND_CPU or KIND_AUTO"
        )
    if reasons:
        raise UnsupportedModel(f"{name}: config.pbtxt asks for " + "; ".join(reasons))


def _histogram_buckets(config: ModelConfig) -> tuple[float, ...] | None:
    """Buckets a config.pbtxt sets for the first-response histogram (Triton's `model_metrics`)."""
    for control in config.model_metrics.metric_control:
        if control.metric_identifier.family == "nv_inference_first_response_histogram_ms":
            buckets = tuple(control.histogram_options.buckets)
            if buckets != tuple(sorted(set(buckets))):
                raise InvalidInput(
                    f"config.pbtxt of {config.name!r}: histogram buckets must increase, got "
                    f"{list(buckets)}"
                )
            return buckets or None
    return None
