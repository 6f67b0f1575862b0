"""The bad-input table: one row per distinct bad request, against the shared server.

Each row names the RPC, builds the request, and gives the status and the fragments its message
must hold; after each, a good ModelInfer must still be answered exactly. Rows are grouped by RPC
and by what is wrong; `test_the_table_has_at_least_150_distinct_cases` counts them (the ids are
unique and no two rows send the same request).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from cnnzoo.protos import grpc_service_pb2 as pb
from cnnzoo.protos import zoo_pb2
from tests.serving.checks import SAMPLE, assert_status, assert_still_serving
from tests.serving.helpers import DIGITS, MODEL, TAMPERED
from tests.serving.requests import bomb_png, encode, infer_request, png_from_header

CODE = grpc.StatusCode
ONE = SAMPLE[:1]
LONG = "x" * 5000


@dataclass(frozen=True)
class Case:
    rpc: str  # a method of `inference` or `zoo_stub`
    make: Callable[[], Any]
    code: grpc.StatusCode
    fragments: tuple[str, ...] = ()


def infer(code: grpc.StatusCode, *fragments: str, **kwargs: Any) -> Case:
    x = kwargs.pop("x", ONE)
    return Case("ModelInfer", lambda: infer_request(x, **kwargs), code, fragments)


def edited(edit: Callable[[pb.ModelInferRequest], None], code, *fragments: str) -> Case:
    def make() -> pb.ModelInferRequest:
        request = infer_request(ONE)
        edit(request)
        return request

    return Case("ModelInfer", make, code, fragments)


def _output_param(value_field: str, value: Any) -> Callable[[pb.ModelInferRequest], None]:
    def edit(request: pb.ModelInferRequest) -> None:
        output = request.outputs.add(name="logits")
        setattr(output.parameters["classification"], value_field, value)

    return edit


def _request_param(key: str, value_field: str, value: Any):
    def edit(request: pb.ModelInferRequest) -> None:
        setattr(request.parameters[key], value_field, value)

    return edit


def _tensor_params(**params: tuple[str, Any]):
    def edit(request: pb.ModelInferRequest) -> None:
        del request.raw_input_contents[:]
        for key, (value_field, value) in params.items():
            setattr(request.inputs[0].parameters[key], value_field, value)

    return edit


def _typed(field: str, count: int, *, keep_raw: bool = False):
    def edit(request: pb.ModelInferRequest) -> None:
        if not keep_raw:
            del request.raw_input_contents[:]
        values = getattr(request.inputs[0].contents, field)
        values.extend([b"1" if field == "bytes_contents" else 1] * count)

    return edit


DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP64",
    "BYTES",
    "fp32",
    "FLOAT",
    "",
    "FP32 ",
)

MODEL_INFER: dict[str, Case] = {
    # model and version names
    "empty model name": infer(CODE.INVALID_ARGUMENT, "names no model", model=""),
    "unknown model": infer(CODE.NOT_FOUND, "'nope'", "served models", model="nope"),
    "path as model name": infer(CODE.NOT_FOUND, "'../../etc'", model="../../etc"),
    "absolute path as model name": infer(CODE.NOT_FOUND, "'/etc/passwd'", model="/etc/passwd"),
    "model name with NUL": infer(CODE.NOT_FOUND, "\\x00", model="lenet5\x00mnist"),
    "model name with a newline": infer(CODE.NOT_FOUND, "\\n", model="lenet5-mnist\n"),
    "model name in capitals": infer(CODE.NOT_FOUND, "'LENET5-MNIST'", model="LENET5-MNIST"),
    "model name with a trailing space": infer(
        CODE.NOT_FOUND, "'lenet5-mnist '", model="lenet5-mnist "
    ),
    "non-ASCII model name": infer(CODE.NOT_FOUND, "мнист", model="мнист"),
    "5000-character model name": infer(CODE.NOT_FOUND, "(5000 characters)", model=LONG),
    "refused model": infer(CODE.UNAVAILABLE, TAMPERED, "sha256", model=TAMPERED),
    "unknown version": infer(CODE.NOT_FOUND, "'7'", "serving version 1", version="7"),
    "version 0": infer(CODE.NOT_FOUND, "'0'", version="0"),
    "negative version": infer(CODE.NOT_FOUND, "'-1'", version="-1"),
    "fractional version": infer(CODE.NOT_FOUND, "'1.0'", version="1.0"),
    "version as a word": infer(CODE.NOT_FOUND, "'one'", version="one"),
    "version with a space": infer(CODE.NOT_FOUND, "' 1'", version=" 1"),
    "20-digit version": infer(
        CODE.NOT_FOUND, "'99999999999999999999'", version="99999999999999999999"
    ),
    "version with a path": infer(CODE.NOT_FOUND, "'1/../1'", version="1/../1"),
    # input names
    "wrong input name": infer(CODE.INVALID_ARGUMENT, "no input 'image'", "'input'", name="image"),
    "empty input name": infer(CODE.INVALID_ARGUMENT, "no input ''", name=""),
    "input name in capitals": infer(CODE.INVALID_ARGUMENT, "'INPUT'", name="INPUT"),
    "5000-character input name": infer(CODE.INVALID_ARGUMENT, "(5000 characters)", name=LONG),
    # datatypes
    **{
        f"datatype {datatype!r}": infer(
            CODE.INVALID_ARGUMENT, "must be FP32", repr(datatype), datatype=datatype
        )
        for datatype in DATATYPES
    },
    # shapes
    "rank 0": infer(CODE.INVALID_ARGUMENT, "rank 4", "rank 0", shape=[], raw=[b""]),
    "rank 1": infer(CODE.INVALID_ARGUMENT, "rank 4", x=np.zeros(1024, np.float32)),
    "rank 2": infer(CODE.INVALID_ARGUMENT, "rank 4", x=np.zeros((1, 1024), np.float32)),
    "rank 3": infer(CODE.INVALID_ARGUMENT, "rank 4", x=np.zeros((1, 32, 32), np.float32)),
    "rank 5": infer(CODE.INVALID_ARGUMENT, "rank 4", x=np.zeros((1, 1, 1, 32, 32), np.float32)),
    "rank 1000": infer(
        CODE.INVALID_ARGUMENT, "(1000 dimensions)", shape=[1] * 1000, raw=[b"\0" * 4]
    ),
    "three channels": infer(
        CODE.INVALID_ARGUMENT, "[-1, 1, 32, 32]", x=np.zeros((1, 3, 32, 32), np.float32)
    ),
    "28x28 digits": infer(
        CODE.INVALID_ARGUMENT, "[-1, 1, 32, 32]", x=np.zeros((1, 1, 28, 28), np.float32)
    ),
    "one column short": infer(
        CODE.INVALID_ARGUMENT, "[1, 1, 32, 31]", x=np.zeros((1, 1, 32, 31), np.float32)
    ),
    "height and width swapped with channels": infer(
        CODE.INVALID_ARGUMENT, "[1, 32, 32, 1]", x=np.zeros((1, 32, 32, 1), np.float32)
    ),
    "-1 in a dimension": infer(CODE.INVALID_ARGUMENT, "[1, 1, -1, 32]", shape=[1, 1, -1, 32]),
    "-1 as the batch size": infer(CODE.INVALID_ARGUMENT, "batch size -1", shape=[-1, 1, 32, 32]),
    "batch size 0": infer(
        CODE.INVALID_ARGUMENT, "at least 1", x=np.zeros((0, 1, 32, 32), np.float32)
    ),
    "batch over max_batch_size": infer(
        CODE.INVALID_ARGUMENT, "65", "max_batch_size 64", x=np.zeros((65, 1, 32, 32), np.float32)
    ),
    "batch 2**40": infer(
        CODE.INVALID_ARGUMENT,
        "1099511627776",
        "max_batch_size 64",
        shape=[2**40, 1, 32, 32],
        raw=[b""],
    ),
    # raw byte lengths
    "one byte short": infer(
        CODE.INVALID_ARGUMENT, "4095 bytes", "needs 4096", raw=[b"\0" * 4095], shape=[1, 1, 32, 32]
    ),
    "one byte over": infer(
        CODE.INVALID_ARGUMENT, "4097 bytes", "needs 4096", raw=[b"\0" * 4097], shape=[1, 1, 32, 32]
    ),
    "no bytes": infer(
        CODE.INVALID_ARGUMENT, "0 bytes", "needs 4096", raw=[b""], shape=[1, 1, 32, 32]
    ),
    "bytes of two images for one": infer(
        CODE.INVALID_ARGUMENT, "8192 bytes", "needs 4096", raw=[b"\0" * 8192], shape=[1, 1, 32, 32]
    ),
    "FP16-sized bytes": infer(
        CODE.INVALID_ARGUMENT, "2048 bytes", raw=[b"\0" * 2048], shape=[1, 1, 32, 32]
    ),
    "two raw entries for one input": infer(
        CODE.INVALID_ARGUMENT, "2 entries", raw=[b"\0" * 4096] * 2, shape=[1, 1, 32, 32]
    ),
    "raw entry without an input": Case(
        "ModelInfer",
        lambda: pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[b"\0" * 4096]),
        CODE.INVALID_ARGUMENT,
        ("1 entries for 0 inputs",),
    ),
    # typed contents
    "typed contents one value short": edited(
        _typed("fp32_contents", 1023), CODE.INVALID_ARGUMENT, "1023 values", "needs 1024"
    ),
    "typed contents one value over": edited(
        _typed("fp32_contents", 1025), CODE.INVALID_ARGUMENT, "1025 values"
    ),
    "typed contents in the INT32 field": edited(
        _typed("int_contents", 1024), CODE.INVALID_ARGUMENT, "carries no data"
    ),
    "typed contents in the BYTES field": edited(
        _typed("bytes_contents", 1024), CODE.INVALID_ARGUMENT, "carries no data"
    ),
    "raw and typed contents together": edited(
        _typed("fp32_contents", 1024, keep_raw=True), CODE.INVALID_ARGUMENT, "not both"
    ),
    "no data at all": infer(CODE.INVALID_ARGUMENT, "carries no data", x=None, shape=[1, 1, 32, 32]),
    # inputs and outputs
    "no inputs": Case(
        "ModelInfer",
        lambda: pb.ModelInferRequest(model_name=MODEL),
        CODE.INVALID_ARGUMENT,
        ("takes 1 input", "has 0"),
    ),
    "two inputs": edited(
        lambda r: (
            r.inputs.add(name="input", datatype="FP32", shape=[1]),
            r.raw_input_contents.append(b"\0" * 4),
        ),
        CODE.INVALID_ARGUMENT,
        "takes 1 input",
        "has 2",
    ),
    "empty request": Case(
        "ModelInfer", pb.ModelInferRequest, CODE.INVALID_ARGUMENT, ("names no model",)
    ),
    "unknown output": infer(
        CODE.INVALID_ARGUMENT, "no output 'probs'", "'logits'", outputs=[("probs", 0)]
    ),
    "empty output name": infer(CODE.INVALID_ARGUMENT, "no output ''", outputs=[("", 0)]),
    "classification 0": edited(_output_param("int64_param", 0), CODE.INVALID_ARGUMENT, ">= 1"),
    "classification -3": edited(_output_param("int64_param", -3), CODE.INVALID_ARGUMENT, "-3"),
    "classification as a word": edited(
        _output_param("string_param", "three"), CODE.INVALID_ARGUMENT, "integer class count"
    ),
    "classification as a superscript digit": edited(
        _output_param("string_param", "\u00b2"), CODE.INVALID_ARGUMENT, "integer class count"
    ),
    "classification as a bool": edited(
        _output_param("bool_param", True), CODE.INVALID_ARGUMENT, "integer class count"
    ),
    "classification as a double": edited(
        _output_param("double_param", 2.5), CODE.INVALID_ARGUMENT, "integer class count"
    ),
    "classification of 5000 digits": edited(
        _output_param("string_param", "9" * 5000), CODE.INVALID_ARGUMENT, "integer class count"
    ),
    # request and tensor parameters
    "negative timeout": edited(
        _request_param("timeout", "int64_param", -1), CODE.INVALID_ARGUMENT, "'timeout'"
    ),
    "timeout as a string": edited(
        _request_param("timeout", "string_param", "10s"), CODE.INVALID_ARGUMENT, "'timeout'"
    ),
    "shared-memory region without its size": edited(
        _tensor_params(shared_memory_region=("string_param", "r")),
        CODE.INVALID_ARGUMENT,
        "shared_memory_byte_size",
    ),
    "shared-memory offset without a region": edited(
        _tensor_params(shared_memory_offset=("int64_param", 0)),
        CODE.INVALID_ARGUMENT,
        "without shared_memory_region",
    ),
    "unregistered shared-memory region": edited(
        _tensor_params(
            shared_memory_region=("string_param", "nope"),
            shared_memory_byte_size=("int64_param", 4096),
        ),
        CODE.NOT_FOUND,
        "'nope'",
        "SystemSharedMemoryRegister",
    ),
    "shared-memory region named by a number": edited(
        _tensor_params(
            shared_memory_region=("int64_param", 3), shared_memory_byte_size=("int64_param", 4096)
        ),
        CODE.INVALID_ARGUMENT,
        "must be a string",
    ),
}


def _model_call(rpc: str, message: type, code, *fragments: str, **fields: str) -> Case:
    return Case(rpc, lambda: message(**fields), code, fragments)


OTHER_INFERENCE: dict[str, Case] = {}
for _rpc, _message in (
    ("ModelMetadata", pb.ModelMetadataRequest),
    ("ModelConfig", pb.ModelConfigRequest),
    ("ModelReady", pb.ModelReadyRequest),
    ("ModelStatistics", pb.ModelStatisticsRequest),
):
    OTHER_INFERENCE |= {
        f"{_rpc}: unknown model": _model_call(
            _rpc, _message, CODE.NOT_FOUND, "'nope'", name="nope"
        ),
        f"{_rpc}: path as model name": _model_call(_rpc, _message, CODE.NOT_FOUND, name="../x"),
        f"{_rpc}: 5000-character name": _model_call(
            _rpc, _message, CODE.NOT_FOUND, "(5000 characters)", name=LONG
        ),
        f"{_rpc}: unknown version": _model_call(
            _rpc, _message, CODE.NOT_FOUND, "'7'", name=MODEL, version="7"
        ),
    }
# ModelReady of an unknown version answers ready=false, as the protocol says: not an error.
del OTHER_INFERENCE["ModelReady: unknown version"]
OTHER_INFERENCE |= {
    "ModelStatistics: a version without a model": _model_call(
        "ModelStatistics",
        pb.ModelStatisticsRequest,
        CODE.INVALID_ARGUMENT,
        "needs a model name",
        version="1",
    ),
    "ModelMetadata: refused model": _model_call(
        "ModelMetadata", pb.ModelMetadataRequest, CODE.UNAVAILABLE, TAMPERED, name=TAMPERED
    ),
    "RepositoryModelLoad without explicit model control": _model_call(
        "RepositoryModelLoad",
        pb.RepositoryModelLoadRequest,
        CODE.UNAVAILABLE,
        "--model-control-mode",
        model_name=MODEL,
    ),
    "RepositoryModelUnload without explicit model control": _model_call(
        "RepositoryModelUnload",
        pb.RepositoryModelUnloadRequest,
        CODE.UNAVAILABLE,
        "--model-control-mode",
        model_name=MODEL,
    ),
}


# -- images ------------------------------------------------------------------------------------


def _digit() -> bytes:
    return DIGITS[0].read_bytes()


def _flip_from(data: bytes, start: int) -> bytes:
    corrupt = bytearray(data)
    for i in range(start, len(corrupt) - 20):
        corrupt[i] ^= 0x5A
    return bytes(corrupt)


def _bad_crc() -> bytes:
    data = bytearray(_digit())
    data[29] ^= 0xFF  # inside IHDR's CRC
    return bytes(data)


def _jpeg() -> bytes:
    return encode(Image.open(DIGITS[0]).convert("RGB"), "JPEG", quality=90)


def _png_chunks(width: int, height: int, bit_depth: int, colour: int) -> bytes:
    return png_from_header(width, height, bit_depth, colour, b"\0" * 64)


def _idat_garbage() -> bytes:
    header = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"not zlib")
        + chunk(b"IEND", b"")
    )


def _other_format(fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


BAD_IMAGES: dict[str, tuple[Callable[[], bytes], tuple[str, ...]]] = {
    "empty bytes": (lambda: b"", ("empty",)),
    "text": (lambda: b"hello, this is text and not a picture", ("not a PNG or JPEG",)),
    "SVG": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg"/>', ("not a PNG or JPEG",)),
    "PDF": (lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", ("not a PNG or JPEG",)),
    "GIF": (lambda: _other_format("GIF"), ("not a PNG or JPEG",)),
    "BMP": (lambda: _other_format("BMP"), ("not a PNG or JPEG",)),
    "TIFF": (lambda: _other_format("TIFF"), ("not a PNG or JPEG",)),
    "WebP": (lambda: _other_format("WEBP"), ("not a PNG or JPEG",)),
    "ICO": (lambda: _other_format("ICO"), ("not a PNG or JPEG",)),
    "PNG signature only": (lambda: b"\x89PNG\r\n\x1a\n", ("corrupt or truncated",)),
    "PNG cut after its header": (lambda: _digit()[:33], ("corrupt or truncated",)),
    "PNG cut in half": (lambda: _digit()[: len(_digit()) // 2], ("corrupt or truncated",)),
    "PNG cut inside its pixel data": (lambda: _digit()[:-40], ("corrupt or truncated",)),
    "PNG with a bad header CRC": (_bad_crc, ("corrupt or truncated",)),
    "PNG with scrambled pixels": (lambda: _flip_from(_digit(), 60), ("corrupt or truncated",)),
    "PNG whose pixel data is not zlib": (_idat_garbage, ("corrupt or truncated",)),
    "PNG declaring 0x0 pixels": (lambda: _png_chunks(0, 0, 8, 0), ("corrupt or truncated",)),
    "PNG with bit depth 3": (lambda: _png_chunks(8, 8, 3, 0), ("corrupt or truncated",)),
    "PNG with colour type 5": (lambda: _png_chunks(8, 8, 8, 5), ("corrupt or truncated",)),
    "decompression bomb": (lambda: bomb_png(30_000, 30_000), ("too large",)),
    "bomb below twice the limit": (lambda: bomb_png(10_000, 10_000), ("too large",)),
    "JPEG signature only": (lambda: b"\xff\xd8\xff", ("corrupt or truncated",)),
    "JPEG cut in half": (lambda: _jpeg()[: len(_jpeg()) // 2], ("corrupt or truncated",)),
    "JPEG with scrambled data": (lambda: _flip_from(_jpeg(), 200), ("corrupt or truncated",)),
}

CLASSIFY: dict[str, Case] = {
    f"Classify: {name}": Case(
        "Classify",
        lambda make=make: zoo_pb2.ClassifyRequest(model=MODEL, images=[_digit(), make()]),
        CODE.INVALID_ARGUMENT,
        ("image 1", *fragments),
    )
    for name, (make, fragments) in BAD_IMAGES.items()
}
CLASSIFY |= {
    "Classify: no model": Case(
        "Classify",
        lambda: zoo_pb2.ClassifyRequest(images=[_digit()]),
        CODE.INVALID_ARGUMENT,
        ("names no model",),
    ),
    "Classify: unknown model": Case(
        "Classify",
        lambda: zoo_pb2.ClassifyRequest(model="nope", images=[_digit()]),
        CODE.NOT_FOUND,
        ("'nope'",),
    ),
    "Classify: refused model": Case(
        "Classify",
        lambda: zoo_pb2.ClassifyRequest(model=TAMPERED, images=[_digit()]),
        CODE.UNAVAILABLE,
        ("sha256",),
    ),
    "Classify: unknown version": Case(
        "Classify",
        lambda: zoo_pb2.ClassifyRequest(model=MODEL, version="7", images=[_digit()]),
        CODE.NOT_FOUND,
        ("'7'",),
    ),
    "Classify: no images": Case(
        "Classify",
        lambda: zoo_pb2.ClassifyRequest(model=MODEL),
        CODE.INVALID_ARGUMENT,
        ("no images",),
    ),
    "Classify: negative top_k": Case(
        "Classify",
        lambda: zoo_pb2.ClassifyRequest(model=MODEL, images=[_digit()], top_k=-1),
        CODE.INVALID_ARGUMENT,
        ("top_k",),
    ),
    "Classify: 257 images": Case(
        "Classify",
        lambda: zoo_pb2.ClassifyRequest(model=MODEL, images=[encode(Image.new("L", (1, 1)))] * 257),
        CODE.RESOURCE_EXHAUSTED,
        ("--max-classify-images",),
    ),
    "Classify: 162 megapixels": Case(
        "Classify",
        lambda: zoo_pb2.ClassifyRequest(model=MODEL, images=[bomb_png(9000, 9000)] * 2),
        CODE.RESOURCE_EXHAUSTED,
        ("--max-request-pixels",),
    ),
    "Classify: the first image bad": Case(
        "Classify",
        lambda: zoo_pb2.ClassifyRequest(model=MODEL, images=[b"junk", _digit()]),
        CODE.INVALID_ARGUMENT,
        ("image 0",),
    ),
}

EXPLAIN: dict[str, Case] = {
    f"Explain: {name}": Case(
        "Explain",
        lambda make=make: zoo_pb2.ExplainRequest(model=MODEL, image=make(), method="gradient"),
        CODE.INVALID_ARGUMENT,
        fragments,
    )
    for name, (make, fragments) in BAD_IMAGES.items()
    if name
    in (
        "empty bytes",
        "text",
        "GIF",
        "PNG cut in half",
        "decompression bomb",
        "JPEG cut in half",
    )
}


def _explain(code, *fragments: str, **fields: Any) -> Case:
    fields.setdefault("model", MODEL)
    fields.setdefault("method", "gradient")
    return Case(
        "Explain", lambda: zoo_pb2.ExplainRequest(image=_digit(), **fields), code, fragments
    )


EXPLAIN |= {
    "Explain: unknown method": _explain(
        CODE.INVALID_ARGUMENT, "'x'", "guided-backprop", method="x"
    ),
    "Explain: empty method": _explain(CODE.INVALID_ARGUMENT, "''", method=""),
    "Explain: 5000-character method": _explain(
        CODE.INVALID_ARGUMENT, "(5000 characters)", method=LONG
    ),
    "Explain: target -1": _explain(CODE.INVALID_ARGUMENT, "target -1", "0 to 9", target=-1),
    "Explain: target 10": _explain(CODE.INVALID_ARGUMENT, "target 10", target=10),
    "Explain: target 2**31-1": _explain(
        CODE.INVALID_ARGUMENT, "target 2147483647", target=2**31 - 1
    ),
    "Explain: unknown model": _explain(CODE.NOT_FOUND, "'nope'", model="nope"),
    "Explain: refused model": _explain(CODE.UNAVAILABLE, "sha256", model=TAMPERED),
    "Explain: unknown version": _explain(CODE.NOT_FOUND, "'7'", version="7"),
}

HEALTH: dict[str, Case] = {
    "Health: unknown service": Case("Check", lambda: "no-such-service", CODE.NOT_FOUND, ()),
    "Health: 5000-character service": Case("Check", lambda: LONG, CODE.NOT_FOUND, ()),
}

CASES: dict[str, Case] = {**MODEL_INFER, **OTHER_INFERENCE, **CLASSIFY, **EXPLAIN, **HEALTH}


def test_the_table_has_at_least_150_distinct_cases():
    assert len(CASES) >= 150, len(CASES)
    sent = set()
    for name, case in CASES.items():
        request = case.make()
        key = (
            case.rpc,
            request.SerializeToString(deterministic=True)
            if hasattr(request, "SerializeToString")
            else request,
        )
        assert key not in sent, f"{name} sends the same request as another row"
        sent.add(key)


@pytest.fixture(scope="module")
def health_stub(channel):
    from grpc_health.v1 import health_pb2_grpc

    return health_pb2_grpc.HealthStub(channel)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, inference, zoo_stub, health_stub, onnx_reference):
    case = CASES[name]
    if case.rpc == "Check":
        from grpc_health.v1 import health_pb2

        def call():
            return health_stub.Check(health_pb2.HealthCheckRequest(service=case.make()), timeout=10)
    else:
        stub = zoo_stub if case.rpc in ("Classify", "Explain") else inference
        method = getattr(stub, case.rpc)

        def call():
            return method(case.make(), timeout=30)

    details = assert_status(call, case.code, *case.fragments)
    assert len(details) < 1000, len(details)
    assert_still_serving(inference, onnx_reference)
