"""Tensors on the wire and in rows: the protocol's tensor codec, shared by both front ends.

- Decoding: an input tensor as sent (raw little-endian bytes, typed contents or a shared-memory
  region) is checked against the model's `TensorSpec` (name, datatype, rank, shape, batch size,
  byte length) and becomes an array that is a view of the request's bytes (no copy).
- Encoding: the model's answer becomes the requested output: raw little-endian bytes, the
  classification extension's `"score:index:label"` BYTES strings, or bytes written into a
  shared-memory region.
- BYTES tensors: each element prefixed by its 4-byte little-endian length, both ways (the REST
  front end decodes them into JSON strings).
- Rows (`RowLayout`): the batcher and the runtime work in rows `[N, *dims]`. A model without a
  batch dimension (max_batch_size 0) takes one whole tensor per request: it travels as one row,
  the graph gets that row without the row axis, and the answer loses the row again. Adding and
  removing that axis, and config.pbtxt's `reshape`, happen here and nowhere else.

Errors are `InvalidInput` with reasons that name the expected value. No protobuf in here.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cnnzoo.errors import InvalidInput, quoted
from cnnzoo.serving.spec import ModelSpec, TensorSpec
from cnnzoo.serving.types import InferInput, InferOutput, RequestedOutput, SharedMemoryRef

__all__ = [
    "RowLayout",
    "classification_strings",
    "decode_input",
    "deserialize_bytes_tensor",
    "encode_output",
    "requested_outputs",
    "serialize_bytes_tensor",
    "top_k_indices",
]

_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class RowLayout:
    """How one model's tensors become rows of its batcher, and rows its graph's tensors.

    Args:
        batched: the model has a batch dimension (without one, a request is one row).
        graph_input: the shape the graph takes without the batch, when config.pbtxt's
            `reshape` says it differs from the input's dims (None: the dims themselves).
        output_dims: the dims the graph's output is reshaped to (None: as the graph gives it).
    """

    batched: bool = True
    graph_input: tuple[int, ...] | None = None
    output_dims: tuple[int, ...] | None = None

    @classmethod
    def of(cls, spec: ModelSpec) -> RowLayout:
        """The layout config.pbtxt describes."""
        reshaped_output = spec.output.reshape is not None
        return cls(spec.batched, spec.input.reshape, spec.output.dims if reshaped_output else None)

    # -- the protocol side: a request's tensor and its answer --------------------------------

    def to_rows(self, tensor: np.ndarray) -> np.ndarray:
        """A request's input tensor as rows for the batcher."""
        return tensor if self.batched else tensor[None]

    def from_rows(self, rows: np.ndarray) -> np.ndarray:
        """A request's rows of output as the tensor it is answered with."""
        return rows if self.batched else rows[0]

    def answer_shape(self, rows: int, *dims: int) -> tuple[int, ...]:
        """The shape of an answer of `rows` rows of `dims` each."""
        return (rows, *dims) if self.batched else dims

    # -- the graph side: what the runtime feeds the session and reads back ------------------

    def to_graph(self, rows: np.ndarray) -> np.ndarray:
        """A batch of rows as the graph's input."""
        graph = rows if self.batched else rows[0]
        if self.graph_input is None:
            return graph
        return graph.reshape((len(rows), *self.graph_input) if self.batched else self.graph_input)

    def from_graph(self, output: np.ndarray, rows: int) -> np.ndarray:
        """The graph's output for a batch of `rows` rows, as rows."""
        if not self.batched:
            output = output[None]
        if self.output_dims is not None:
            output = output.reshape((rows, *self.output_dims))
        return output


# -- decoding ------------------------------------------------------------------------------------


def decode_input(
    tensor: InferInput,
    spec: TensorSpec,
    max_batch_size: int,
    model: str,
    region: Callable[[SharedMemoryRef], memoryview],
) -> np.ndarray:
    """Check one input tensor against the model and return it as an array (a view of the
    request's bytes or of the shared-memory region `region` gives: no copy).

    Raises:
        InvalidInput: the name, datatype, rank, shape, batch size or byte length is not the
            model's, or the tensor carries no data or two kinds of it.
    """
    where = f"input {tensor.name!r} of model {model!r}"
    _check_header(tensor, spec, max_batch_size, model, where)
    shape = tensor.shape
    count = math.prod(shape)
    dtype = spec.wire_dtype
    needed = count * dtype.itemsize
    if tensor.shared_memory is not None:
        ref = tensor.shared_memory
        if tensor.raw is not None or tensor.values:
            raise InvalidInput(
                f"{where} names shared-memory region {ref.region!r} and also carries data; "
                "send one or the other"
            )
        if ref.byte_size != needed:
            raise InvalidInput(
                f"{where} has shared_memory_byte_size {ref.byte_size}; shape {list(shape)} "
                f"{spec.datatype} needs {needed}"
            )
        return np.frombuffer(region(ref), dtype=dtype).reshape(shape)
    if tensor.raw is not None:
        if len(tensor.raw) != needed:
            raise InvalidInput(
                f"{where} has {len(tensor.raw)} bytes of raw data; shape {list(shape)} "
                f"{spec.datatype} needs {needed}"
            )
        return np.frombuffer(tensor.raw, dtype=dtype).reshape(shape)
    if tensor.values:
        if len(tensor.values) != count:
            raise InvalidInput(
                f"{where} has {len(tensor.values)} values in its contents; shape "
                f"{list(shape)} needs {count}"
            )
        return np.asarray(tensor.values, dtype=dtype).reshape(shape)
    raise InvalidInput(
        f"{where} carries no data: send it in raw_input_contents, in its typed contents or in "
        "a shared-memory region"
    )


def _check_header(
    tensor: InferInput, spec: TensorSpec, max_batch_size: int, model: str, where: str
) -> None:
    """The tensor's name, datatype, rank, shape and batch size are the model's."""
    expected_shape = spec.shape_with_batch()
    if tensor.name != spec.name:
        raise InvalidInput(
            f"model {model!r} has no input {quoted(tensor.name)}; its input is {spec.name!r} "
            f"{spec.datatype} {expected_shape}"
        )
    if tensor.datatype != spec.datatype:
        raise InvalidInput(f"{where} must be {spec.datatype}, got {quoted(tensor.datatype)}")
    shape = tensor.shape
    if len(shape) != len(expected_shape):
        raise InvalidInput(
            f"{where} must have rank {len(expected_shape)} (shape {expected_shape}), "
            f"got rank {len(shape)} (shape {_shape_text(shape)})"
        )
    if not spec.accepts(tuple(shape[1:]) if spec.batched else tuple(shape)):
        raise InvalidInput(f"{where} must have shape {expected_shape}, got {list(shape)}")
    if spec.batched:
        batch = shape[0]
        if batch < 1:
            raise InvalidInput(f"{where} has batch size {batch}; it must be at least 1")
        if batch > max_batch_size:
            raise InvalidInput(
                f"{where} has batch size {batch}, over the model's max_batch_size {max_batch_size}"
            )


def _shape_text(shape: Sequence[int]) -> str:
    """A shape as a message shows it (a caller may send thousands of dimensions)."""
    if len(shape) <= 8:
        return str(list(shape))
    return f"[{', '.join(map(str, shape[:8]))}, ... ({len(shape)} dimensions)]"


def requested_outputs(
    requested: list[RequestedOutput], spec: TensorSpec, model: str
) -> list[RequestedOutput]:
    """The outputs a request asks for (none named: the model's output), checked.

    Raises:
        InvalidInput: an unknown output, a class count below 1, or classification into a
            shared-memory region.
    """
    if not requested:
        return [RequestedOutput(spec.name)]
    for output in requested:
        if output.name != spec.name:
            raise InvalidInput(
                f"model {model!r} has no output {quoted(output.name)}; its output is {spec.name!r}"
            )
        if output.classification < 0:
            raise InvalidInput(
                f"classification for output {output.name!r} must be a class count >= 1, "
                f"got {output.classification}"
            )
        if output.classification and output.shared_memory is not None:
            raise InvalidInput(
                f"output {output.name!r} asks for classification and a shared-memory region; "
                "classification answers are sent in the response"
            )
    return requested


# -- encoding ------------------------------------------------------------------------------------


class OutputRegion(Protocol):
    """Where an output in shared memory is written: its byte size and a slice assignment (a
    mapped `memoryview`, or the registry's `RegionWriter`, which writes with one `pwrite`)."""

    def __len__(self) -> int: ...

    def __setitem__(self, index: slice, data: memoryview, /) -> None: ...


def encode_output(
    rows: np.ndarray,
    output: RequestedOutput,
    target: OutputRegion | None,
    spec: TensorSpec,
    labels: Sequence[str],
    layout: RowLayout,
) -> InferOutput:
    """One requested output of a request's answer (`rows`, as the batcher gave them): raw
    bytes, written into `target` (the output's shared-memory region), or top-k strings.

    Raises:
        InvalidInput: the answer does not fit in `target`.
    """
    if output.classification:
        scores = rows.reshape(len(rows), -1)  # e.g. [N, C, 1, 1] -> [N, C]
        k = min(output.classification, scores.shape[1])
        strings = classification_strings(scores, k, labels)
        shape = layout.answer_shape(len(rows), k)
        return InferOutput(output.name, "BYTES", shape, serialize_bytes_tensor(strings))
    answer = layout.from_rows(rows)
    data = np.ascontiguousarray(answer, dtype=spec.wire_dtype)
    if target is None or output.shared_memory is None:
        return InferOutput(output.name, spec.datatype, answer.shape, data.tobytes())
    if data.nbytes > len(target):
        raise InvalidInput(
            f"output {output.name!r} needs {data.nbytes} bytes; shared-memory region "
            f"{output.shared_memory.region!r} was given shared_memory_byte_size {len(target)}"
        )
    target[: data.nbytes] = data.data.cast("B")
    return InferOutput(output.name, spec.datatype, answer.shape, b"", output.shared_memory)


def classification_strings(scores: np.ndarray, k: int, labels: Sequence[str]) -> list[bytes]:
    """The classification extension: per row, the top-k as `b"score:index:label"`, best first.

    `score` is the output tensor's value (here the logit), formatted as Triton does (`%f`).
    """
    out: list[bytes] = []
    for row, order in zip(scores, top_k_indices(scores, k), strict=True):
        for index in order:
            label = labels[index] if index < len(labels) else ""
            text = f"{row[index]:f}:{index}:{label}" if label else f"{row[index]:f}:{index}"
            out.append(text.encode("utf-8"))
    return out


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row of `scores` `[N, C]`, the indices of the `k` largest, best first (ties: lower
    index first), as `[N, k]`."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


# -- BYTES ---------------------------------------------------------------------------------------


def serialize_bytes_tensor(elements: Sequence[bytes]) -> bytes:
    """BYTES tensor wire format: each element prefixed by its 4-byte little-endian length."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def deserialize_bytes_tensor(raw: bytes | memoryview) -> list[bytes]:
    """The elements of a BYTES tensor in the wire format.

    Raises:
        InvalidInput: a length prefix runs past the end of the data.
    """
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise InvalidInput(f"a BYTES tensor ends inside a length prefix at byte {offset}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise InvalidInput(
                f"a BYTES tensor element of {length} bytes at byte {offset} runs past its end "
                f"({len(raw)} bytes)"
            )
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    return items
