"""Request builders and crafted images for the serving tests."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from tests.serving.helpers import MODEL


def infer_request(
    x: np.ndarray | None = None,
    *,
    model: str = MODEL,
    version: str = "",
    name: str = "input",
    datatype: str = "FP32",
    shape: list[int] | None = None,
    raw: list[bytes] | None = None,
    typed: bool = False,
    outputs: list[tuple[str, int]] = (),
):
    """A ModelInferRequest for `x` (raw contents unless `typed`), overridable field by field."""
    from cnnzoo.protos import grpc_service_pb2

    request = grpc_service_pb2.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name=name, datatype=datatype)
    if x is not None:
        tensor.shape.extend(shape if shape is not None else x.shape)
        if typed:
            tensor.contents.fp32_contents.extend(x.ravel().tolist())
        elif raw is None:
            request.raw_input_contents.append(x.astype("<f4").tobytes())
    elif shape is not None:
        tensor.shape.extend(shape)
    if raw is not None:
        request.raw_input_contents.extend(raw)
    for output_name, class_count in outputs:
        requested = request.outputs.add(name=output_name)
        if class_count:
            requested.parameters["classification"].int64_param = class_count
    return request


def logits_of(response, index: int = 0) -> np.ndarray:
    output = response.outputs[index]
    assert output.datatype == "FP32"
    data = np.frombuffer(response.raw_output_contents[index], dtype="<f4")
    return data.reshape(tuple(output.shape))


def bytes_tensor(raw: bytes) -> list[bytes]:
    """Decode a BYTES tensor (4-byte little-endian length prefixes)."""
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        items.append(raw[offset : offset + length])
        offset += length
    return items


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_from_header(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A PNG written chunk by chunk (for formats and sizes Pillow will not write for us)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def bomb_png(width: int, height: int) -> bytes:
    """A tiny file whose header declares `width` x `height` pixels (a decompression bomb)."""
    return png_from_header(width, height, 8, 0, b"\x00" * 16)


def rgb16_png(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write these)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    return png_from_header(width, height, 16, 2, rows)


def encode(image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()
