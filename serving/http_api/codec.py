"""KServe v2 REST bodies to and from the data plane's plain types: JSON tensors and Triton's
binary tensor extension.

A request body is a JSON header, optionally followed by binary tensor data: the header's length is
the `Inference-Header-Content-Length` HTTP header, and each input whose parameters carry
`binary_data_size` takes that many bytes of the rest, in input order (they must add up exactly).
Other inputs carry `data`, flat or nested row-major JSON arrays, or name a shared-memory region.
An output is answered in binary when it asks for `binary_data` (or the request for
`binary_data_output`), else as JSON `data`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnnzoo.errors import InvalidInput
from cnnzoo.serving.spec import DATATYPES
from cnnzoo.serving.stats import Duration, ModelStats
from cnnzoo.serving.tensors import deserialize_bytes_tensor
from cnnzoo.serving.types import (
    InferInput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    RequestedOutput,
    SharedMemoryRef,
)

__all__ = [
    "HEADER_LENGTH",
    "infer_request_from_body",
    "infer_response_to_body",
    "model_metadata_to_json",
    "model_statistics_to_json",
    "parse_json_object",
]

# Triton's HTTP header giving the length of the JSON part of a body with binary tensors.
HEADER_LENGTH = "Inference-Header-Content-Length"

_REGION, _OFFSET, _BYTE_SIZE = (
    "shared_memory_region",
    "shared_memory_offset",
    "shared_memory_byte_size",
)
# numpy kinds a JSON array may decode to, per protocol datatype kind ("b" bool, "i"/"u" ints).
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def infer_request_from_body(
    model: str, version: str, body: bytes, header_length: str | None
) -> tuple[InferRequest, list[bool]]:
    """The request, and per requested output whether it is answered in binary (with no outputs
    named, the one entry is for the model's output).

    Raises:
        InvalidInput: malformed JSON, a header length that lies, wrong types or sizes.
    """
    view = memoryview(body)
    size = len(body)
    if header_length is None:
        split = size
    else:
        try:
            split = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"{HEADER_LENGTH} must be a number of bytes, got {header_length[:40]!r}"
            ) from None
        if not 0 <= split <= size:
            raise InvalidInput(
                f"{HEADER_LENGTH} is {split}, but the body has {size} bytes; it must give the "
                "length of the JSON header before the binary tensor data"
            )
    header = _object(_parse_json(view[:split], "the inference request"), "the inference request")
    binary = view[split:]
    parameters = _object(header.get("parameters", {}), "request 'parameters'")
    inputs_json = header.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise InvalidInput("the inference request needs 'inputs', a non-empty list of tensors")
    inputs = []
    offset = 0
    for i, tensor in enumerate(inputs_json):
        parsed, used = _input(_object(tensor, f"input {i}"), binary, offset)
        inputs.append(parsed)
        offset += used
    if offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary)} bytes of binary tensor data after its JSON header, but "
            f"the inputs' binary_data_size add up to {offset}"
        )
    outputs_json = header.get("outputs", [])
    if not isinstance(outputs_json, list):
        raise InvalidInput("request 'outputs' must be a list")
    binary_default = _flag(parameters, "binary_data_output", "the request")
    outputs = []
    binary_outputs = []
    for i, output in enumerate(outputs_json):
        requested, as_binary = _output(_object(output, f"output {i}"), binary_default)
        outputs.append(requested)
        binary_outputs.append(as_binary)
    request = InferRequest(
        model_name=model,
        model_version=version,
        id=_string(header.get("id", ""), "request 'id'"),
        inputs=inputs,
        outputs=outputs,
        timeout_us=_integer(parameters.get("timeout", 0), "request parameter 'timeout'"),
    )
    return request, binary_outputs or [binary_default]


def _input(tensor: Mapping[str, Any], binary: memoryview, offset: int) -> tuple[InferInput, int]:
    name = _string(tensor.get("name"), "an input's 'name'")
    datatype = _string(tensor.get("datatype"), f"input {name!r} 'datatype'")
    shape_json = tensor.get("shape")
    if not isinstance(shape_json, list):
        raise InvalidInput(f"input {name!r} needs 'shape', a list of integers")
    shape = tuple(_integer(d, f"input {name!r} shape") for d in shape_json)
    parameters = _object(tensor.get("parameters", {}), f"input {name!r} 'parameters'")
    shared = _shared_memory(name, parameters)
    if shared is not None:
        return InferInput(name, datatype, shape, shared_memory=shared), 0
    if "binary_data_size" in parameters:
        if "data" in tensor:
            raise InvalidInput(
                f"input {name!r} has both 'data' and the binary_data_size parameter; send its "
                "values one way: in 'data', or as binary tensor data after the JSON header"
            )
        size = _integer(parameters["binary_data_size"], f"input {name!r} binary_data_size")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {name!r} has binary_data_size {size}, but only {len(binary) - offset} "
                "bytes of binary tensor data are left in the body"
            )
        return InferInput(name, datatype, shape, raw=binary[offset : offset + size]), size
    if "data" not in tensor:
        raise InvalidInput(
            f"input {name!r} carries no data: give 'data', binary_data_size or a shared-memory "
            "region"
        )
    return InferInput(name, datatype, shape, raw=_json_tensor(name, datatype, tensor["data"])), 0


def _json_tensor(name: str, datatype: str, data: Any) -> bytes:
    """A JSON array of numbers as the datatype's little-endian bytes (checked, never cast
    silently: strings, nulls, ragged rows or out-of-range integers are refused)."""
    element = DATATYPES.get(datatype)
    if element is None or datatype == "BYTES":
        raise InvalidInput(f"input {name!r}: datatype {datatype!r} cannot be sent as JSON here")
    dtype = np.dtype(element)
    try:
        values = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"input {name!r}: 'data' has rows of different lengths") from None
    if values.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise InvalidInput(
            f"input {name!r}: 'data' must hold only {datatype} values (JSON "
            f"{'booleans' if dtype.kind == 'b' else 'numbers'}), got {_json_kind(values)}"
        )
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise InvalidInput(
                f"input {name!r}: 'data' has values outside {datatype}'s range "
                f"[{info.min}, {info.max}]"
            )
    return values.astype(dtype.newbyteorder("<"), copy=False).tobytes()


def _json_kind(values: np.ndarray) -> str:
    return {"U": "strings", "O": "nulls, objects or mixed values", "b": "booleans"}.get(
        values.dtype.kind, f"{values.dtype} values"
    )


def _output(output: Mapping[str, Any], binary_default: bool) -> tuple[RequestedOutput, bool]:
    name = _string(output.get("name"), "an output's 'name'")
    parameters = _object(output.get("parameters", {}), f"output {name!r} 'parameters'")
    classification = _integer(
        parameters.get("classification", 0), f"output {name!r} classification"
    )
    shared = _shared_memory(name, parameters, output=True)
    as_binary = _flag(parameters, "binary_data", f"output {name!r}", binary_default)
    return RequestedOutput(name, classification, shared), as_binary


def _shared_memory(
    name: str, parameters: Mapping[str, Any], output: bool = False
) -> SharedMemoryRef | None:
    if _REGION not in parameters:
        if _OFFSET in parameters or _BYTE_SIZE in parameters:
            raise InvalidInput(
                f"tensor {name!r} has shared_memory_offset or shared_memory_byte_size without "
                "shared_memory_region"
            )
        return None
    region = _string(parameters[_REGION], f"parameter {_REGION!r} of tensor {name!r}")
    if _BYTE_SIZE not in parameters:
        raise InvalidInput(f"tensor {name!r} names a shared-memory region without {_BYTE_SIZE!r}")
    offset = _integer(parameters.get(_OFFSET, 0), f"parameter {_OFFSET!r} of tensor {name!r}")
    size = _integer(parameters[_BYTE_SIZE], f"parameter {_BYTE_SIZE!r} of tensor {name!r}")
    return SharedMemoryRef(region, offset, size, output)


def infer_response_to_body(
    response: InferResponse, binary: Sequence[bool]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensor data follows it."""
    outputs = []
    chunks = []
    for output, as_binary in zip(response.outputs, binary, strict=True):
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if output.shared_memory is not None:
            pass  # written into the region; nothing travels in the body
        elif as_binary:
            entry["parameters"] = {"binary_data_size": len(output.raw)}
            chunks.append(output.raw)
        else:
            entry["data"] = _json_data(output.datatype, output.raw)
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        document["id"] = response.id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join((header, *chunks)), len(header)


def _json_data(datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        return [item.decode("utf-8", "replace") for item in deserialize_bytes_tensor(raw)]
    values: list[Any] = np.frombuffer(
        raw, dtype=np.dtype(DATATYPES[datatype]).newbyteorder("<")
    ).tolist()
    return values


def model_metadata_to_json(metadata: ModelMetadata) -> dict[str, Any]:
    def tensors(items: Sequence[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": tensors(metadata.inputs),
        "outputs": tensors(metadata.outputs),
    }


def model_statistics_to_json(stats: Sequence[ModelStats]) -> dict[str, Any]:
    """Triton's `/v2/models/stats` document (durations in nanoseconds)."""

    def duration(d: Duration) -> dict[str, int]:
        return {"count": d.count, "ns": d.ns}

    return {
        "model_stats": [
            {
                "name": s.model,
                "version": s.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": duration(s.success),
                    "fail": duration(s.fail),
                    "queue": duration(s.queue),
                    "compute_input": duration(s.compute_input),
                    "compute_infer": duration(s.compute_infer),
                    "compute_output": duration(s.compute_output),
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": duration(b.compute_input),
                        "compute_infer": duration(b.compute_infer),
                        "compute_output": duration(b.compute_output),
                    }
                    for size, b in sorted(s.batches.items())
                ],
            }
            for s in stats
        ]
    }


# -- JSON value checks ---------------------------------------------------------------------------


def parse_json_object(data: bytes | memoryview, what: str) -> dict[str, Any]:
    """A JSON object from a body (InvalidInput naming `what` if it is not one)."""
    return _object(_parse_json(data, what), what)


def _parse_json(data: bytes | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{what} is not valid JSON: {err}") from None
    except RecursionError:  # e.g. 100,000 nested brackets
        raise InvalidInput(f"{what} is nested too deeply to be a KServe v2 request") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    return value


def _integer(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{what} must be an integer >= {minimum}, got {json.dumps(value)[:40]}")
    return value


def _flag(parameters: Mapping[str, Any], key: str, what: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter {key!r} of {what} must be true or false")
    return value
