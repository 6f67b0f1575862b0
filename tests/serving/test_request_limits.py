"""Bounds on what one request may ask for, and what the server echoes back, against the shared
server (its default limits: 256 images and 100 megapixels per Classify). Each refusal names the
limit and the option that raises it, and the server serves on."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from PIL import Image

from cnnzoo.protos import grpc_service_pb2, zoo_pb2
from tests.serving.checks import SAMPLE, assert_status, assert_still_serving
from tests.serving.helpers import DIGITS, MODEL
from tests.serving.requests import bomb_png, encode, infer_request

CODE = grpc.StatusCode
HUGE = "m" * 100_000  # 100 kB: over a gRPC client's 8 kB header limit if echoed in a message


def test_classify_refuses_more_images_than_its_limit_before_decoding(
    zoo_stub, inference, onnx_reference
):
    tiny = encode(Image.new("L", (1, 1)))
    request = zoo_pb2.ClassifyRequest(model=MODEL, images=[tiny] * 257)
    assert_status(
        lambda: zoo_stub.Classify(request, timeout=10),
        CODE.RESOURCE_EXHAUSTED,
        "(257)",
        "limit of 256",
        "--max-classify-images",
    )
    assert len(zoo_stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=[tiny] * 256)).results)
    assert_still_serving(inference, onnx_reference)


def test_classify_refuses_a_request_over_its_pixel_budget_from_the_headers(
    zoo_stub, inference, onnx_reference
):
    # Two 81-megapixel headers: each below Pillow's decompression-bomb limit, together over the
    # server's 100 megapixels; refused from the headers (the files are 100 bytes each).
    images = [DIGITS[0].read_bytes(), bomb_png(9000, 9000), bomb_png(9000, 9000)]
    assert_status(
        lambda: zoo_stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=images), timeout=10),
        CODE.RESOURCE_EXHAUSTED,
        "3 image(s)",
        "limit of 100000000",
        "--max-request-pixels",
    )
    assert_still_serving(inference, onnx_reference)


def _long_infer(field: str):
    request = infer_request(SAMPLE[:1])
    if field == "model":
        request.model_name = HUGE
    elif field == "version":
        request.model_version = HUGE
    elif field == "input name":
        request.inputs[0].name = HUGE
    elif field == "datatype":
        request.inputs[0].datatype = HUGE
    elif field == "shape":
        del request.inputs[0].shape[:]
        request.inputs[0].shape.extend([1] * 100_000)
    elif field == "output name":
        request.outputs.add(name=HUGE)
    return request


@pytest.mark.parametrize(
    ("field", "code"),
    [
        ("model", CODE.NOT_FOUND),
        ("version", CODE.NOT_FOUND),
        ("input name", CODE.INVALID_ARGUMENT),
        ("datatype", CODE.INVALID_ARGUMENT),
        ("shape", CODE.INVALID_ARGUMENT),
        ("output name", CODE.INVALID_ARGUMENT),
    ],
)
def test_messages_quote_a_huge_client_value_briefly(field, code, inference, onnx_reference):
    details = assert_status(lambda: inference.ModelInfer(_long_infer(field), timeout=10), code)
    assert len(details) < 1000, len(details)
    assert "characters" in details or "dimensions" in details, details
    assert_still_serving(inference, onnx_reference)


def test_other_rpcs_quote_huge_names_briefly(inference, zoo_stub):
    image = DIGITS[0].read_bytes()
    calls = [
        lambda: inference.ModelMetadata(grpc_service_pb2.ModelMetadataRequest(name=HUGE)),
        lambda: inference.ModelReady(grpc_service_pb2.ModelReadyRequest(name=HUGE)),
        lambda: zoo_stub.Classify(zoo_pb2.ClassifyRequest(model=HUGE, images=[image])),
        lambda: zoo_stub.Explain(zoo_pb2.ExplainRequest(model=MODEL, image=image, method=HUGE)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() in (CODE.NOT_FOUND, CODE.INVALID_ARGUMENT), info.value
        assert len(info.value.details()) < 1000


def test_raw_and_typed_contents_together_are_refused(inference, onnx_reference):
    request = infer_request(SAMPLE[:1])
    request.inputs[0].contents.fp32_contents.extend(np.ones(1024, np.float32).tolist())
    assert_status(
        lambda: inference.ModelInfer(request, timeout=10),
        CODE.INVALID_ARGUMENT,
        "typed contents",
        "raw_input_contents",
        "not both",
    )
    assert_still_serving(inference, onnx_reference)


def test_classify_turns_exif_rotated_photos_upright(zoo_stub):
    """A 7 stored sideways with EXIF Orientation 8 (rotate 90 degrees to view), as phone
    cameras write them, is read the way every viewer shows it."""
    seven = next(path for path in DIGITS if path.parent.name == "7")
    upright = Image.open(seven).convert("L")
    sideways = upright.transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8  # Orientation: the stored picture must turn 90 degrees anticlockwise
    images = [
        encode(upright),
        encode(sideways, exif=exif.tobytes()),
        encode(sideways.convert("RGB"), "JPEG", quality=98, exif=exif.tobytes()),
    ]
    response = zoo_stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=images, top_k=1))
    labels = [result.predictions[0].label for result in response.results]
    assert labels == ["7", "7", "7"], labels
    lossless = [result.predictions[0].probability for result in response.results[:2]]
    assert lossless[0] == pytest.approx(lossless[1], abs=1e-6)
