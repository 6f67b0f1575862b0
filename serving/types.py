"""Transport-neutral requests and answers exchanged between the servicers and the data plane."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ClassPrediction",
    "ExplainResult",
    "ClassifyResult",
    "IndexEntry",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "ModelSummary",
    "RequestedOutput",
    "SharedMemoryRef",
    "TensorInfo",
]


@dataclass(frozen=True)
class SharedMemoryRef:
    """Where a tensor lies in a registered shared-memory region (instead of in the message);
    `output`: the region is to be written (an output's), not read."""

    region: str
    offset: int
    byte_size: int
    output: bool = False


@dataclass(slots=True)
class InferInput:
    """One input tensor as sent: exactly one of `raw` (little-endian bytes, or any buffer),
    `values` (the typed contents, a flat sequence) or `shared_memory` carries the data."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | memoryview | None = None
    values: Sequence[float | int | bool | bytes] | None = None
    shared_memory: SharedMemoryRef | None = None


@dataclass(slots=True)
class RequestedOutput:
    """An output the caller wants; `classification` > 0 asks for the top-k classes instead;
    `shared_memory` asks for it to be written into a registered region."""

    name: str
    classification: int = 0
    shared_memory: SharedMemoryRef | None = None


@dataclass(slots=True)
class InferRequest:
    """`timeout_us` (> 0): Triton's per-request `timeout` parameter, in microseconds."""

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)
    timeout_us: int = 0


@dataclass(slots=True)
class InferOutput:
    """`raw` is empty when the output was written to `shared_memory`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes
    shared_memory: SharedMemoryRef | None = None


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutput]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for the batch dimension


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    execution_provider: str


@dataclass(frozen=True)
class ClassPrediction:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: str
    results: list[list[ClassPrediction]]  # per image, best first


@dataclass(frozen=True)
class ModelSummary:
    name: str
    version: str
    versions: tuple[str, ...]
    ready: bool
    state: str
    reason: str
    zoo_entry: str
    dataset: str
    num_classes: int
    input_shape: tuple[int, ...]
    execution_provider: str
    max_batch_size: int


@dataclass(frozen=True)
class ExplainResult:
    model: str
    version: str
    method: str
    target: int
    label: str
    score: float
    png: bytes
    attribution: np.ndarray  # float32 [H, W]
    warnings: tuple[str, ...] = ()  # why the map cannot depend on the input, if it cannot
    quality: dict[str, float] | None = None  # asked for: see cnnzoo.serving.explain_quality
    unit_position: tuple[int, ...] | None = None  # unit methods: the unit's (y, x)
    unit_activation: float | None = None  # unit methods: the unit's value for the image


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index: a model (and version) and its state ("" = not loaded)."""

    name: str
    version: str = ""
    state: str = ""
    reason: str = ""
