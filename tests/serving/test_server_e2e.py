"""End to end over a real port: `cnnzoo serve` in a subprocess, our gRPC client in this one.

Every bad-input case asserts its status code, a message that names the expected value, and
that the server still answers a good request afterwards.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image

from cnnzoo.protos import grpc_service_pb2, zoo_pb2
from tests.serving.checks import SAMPLE, assert_status, assert_still_serving, reference_logits
from tests.serving.helpers import DIGITS, MODEL, QUEUED, TAMPERED, digit_label
from tests.serving.requests import (
    bomb_png,
    bytes_tensor,
    encode,
    infer_request,
    logits_of,
    rgb16_png,
)

CODE = grpc.StatusCode


# -- health, metadata, config -------------------------------------------------------------------


def test_live_ready_and_server_metadata(inference):
    assert inference.ServerLive(grpc_service_pb2.ServerLiveRequest()).live
    assert inference.ServerReady(grpc_service_pb2.ServerReadyRequest()).ready
    assert inference.ModelReady(grpc_service_pb2.ModelReadyRequest(name=MODEL)).ready
    assert inference.ModelReady(grpc_service_pb2.ModelReadyRequest(name=MODEL, version="1")).ready
    assert not inference.ModelReady(grpc_service_pb2.ModelReadyRequest(name=TAMPERED)).ready
    response, call = inference.ServerMetadata.with_call(grpc_service_pb2.ServerMetadataRequest())
    assert response.name == "cnnzoo"
    assert {"classification", "statistics", "model_configuration"} <= set(response.extensions)
    trailers = dict(call.trailing_metadata())
    assert trailers["cnnzoo-execution-provider"] == "CPUExecutionProvider"


def test_model_metadata_and_config_match_the_repository(inference, repository):
    from google.protobuf import text_format

    from cnnzoo.protos import model_config_pb2

    metadata, call = inference.ModelMetadata.with_call(
        grpc_service_pb2.ModelMetadataRequest(name=MODEL)
    )
    assert metadata.name == MODEL and list(metadata.versions) == ["1"]
    assert metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("input", "FP32", [-1, 1, 32, 32])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("logits", "FP32", [-1, 10])
    ]
    assert dict(call.trailing_metadata())["cnnzoo-execution-provider"] == "CPUExecutionProvider"
    config = inference.ModelConfig(grpc_service_pb2.ModelConfigRequest(name=MODEL)).config
    on_disk = text_format.Parse(
        (repository / MODEL / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config == on_disk
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")


# -- inference ----------------------------------------------------------------------------------


def test_infer_raw_and_typed_contents_equal_onnxruntime(inference, onnx_reference):
    expected = reference_logits(onnx_reference, SAMPLE)
    raw = inference.ModelInfer(infer_request(SAMPLE, outputs=[("logits", 0)]))
    assert raw.model_name == MODEL and raw.model_version == "1"
    assert list(raw.outputs[0].shape) == [3, 10]
    np.testing.assert_array_equal(logits_of(raw), expected)
    typed = inference.ModelInfer(infer_request(SAMPLE, typed=True))
    assert not typed.outputs[0].HasField("contents"), "answers always use raw_output_contents"
    np.testing.assert_array_equal(logits_of(typed), expected)


def test_classification_extension_returns_score_index_label(inference, onnx_reference):
    expected = reference_logits(onnx_reference, SAMPLE)
    response = inference.ModelInfer(infer_request(SAMPLE, outputs=[("logits", 3)]))
    output = response.outputs[0]
    assert output.datatype == "BYTES" and list(output.shape) == [3, 3]
    items = bytes_tensor(response.raw_output_contents[0])
    assert len(items) == 9
    for row in range(3):
        top = np.argsort(-expected[row], kind="stable")[:3]
        for rank, index in enumerate(top):
            score, idx, label = items[row * 3 + rank].decode().split(":")
            assert int(idx) == index and label == str(index)  # MNIST labels are the digits
            assert score == f"{expected[row, index]:f}"


def test_concurrent_callers_each_get_their_own_rows(inference, onnx_reference):
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((n, 1, 32, 32)).astype(np.float32) for n in (1, 2, 3, 1) * 8]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda x: inference.ModelInfer(infer_request(x)), inputs))
    for x, response in zip(inputs, responses, strict=True):
        np.testing.assert_allclose(
            logits_of(response), reference_logits(onnx_reference, x), rtol=1e-5, atol=1e-5
        )


def test_nan_and_inf_inputs_are_answered(inference, onnx_reference):
    x = SAMPLE[:2].copy()
    x[0, 0, 0, 0] = np.nan
    x[1, 0, 5, 5] = np.inf
    response = inference.ModelInfer(infer_request(x))
    assert list(response.outputs[0].shape) == [2, 10]
    assert np.isnan(logits_of(response)).any()
    assert_still_serving(inference, onnx_reference)


# -- Classify and ListModels --------------------------------------------------------------------


def _classify_reference(onnx_reference, repository, images: list[bytes]) -> np.ndarray:
    import io

    from cnnzoo.zoo.repository import ModelRepository

    preprocess = ModelRepository(repository).preprocess(MODEL)
    batch = np.stack([preprocess.apply(Image.open(io.BytesIO(data))) for data in images])
    logits = reference_logits(onnx_reference, batch).astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_classify_shipped_digits(zoo_stub, onnx_reference, repository):
    images = [path.read_bytes() for path in DIGITS]
    assert len(images) >= 10
    response = zoo_stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=images, top_k=3))
    assert response.model == MODEL and response.version == "1"
    expected = _classify_reference(onnx_reference, repository, images)
    correct = 0
    for path, result, probabilities in zip(DIGITS, response.results, expected, strict=True):
        assert [p.index for p in result.predictions] == list(np.argsort(-probabilities)[:3])
        for p in result.predictions:
            assert p.label == str(p.index)
            assert p.probability == pytest.approx(probabilities[p.index], abs=1e-5)
        correct += result.predictions[0].label == digit_label(path)
    assert correct / len(images) >= 0.9  # the shipped LeNet-5 reads real MNIST digits


def test_classify_more_images_than_max_batch_size_keeps_their_order(zoo_stub):
    images = [path.read_bytes() for path in DIGITS] * 8  # 160 images: three batches of <= 64
    response = zoo_stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=images, top_k=1))
    assert len(response.results) == len(images)
    first = [r.predictions[0].index for r in response.results[: len(DIGITS)]]
    for start in range(0, len(images), len(DIGITS)):
        chunk = response.results[start : start + len(DIGITS)]
        assert [r.predictions[0].index for r in chunk] == first


def test_list_models_reports_state_provider_and_refusal(zoo_stub):
    models = {m.name: m for m in zoo_stub.ListModels(zoo_pb2.ListModelsRequest()).models}
    lenet = models[MODEL]
    assert lenet.ready and lenet.state == "READY" and lenet.version == "1"
    assert lenet.execution_provider == "CPUExecutionProvider"
    assert lenet.zoo_entry == MODEL and lenet.dataset == "mnist" and lenet.num_classes == 10
    assert list(lenet.input_shape) == [1, 32, 32] and lenet.max_batch_size == 64
    tampered = models[TAMPERED]
    assert not tampered.ready and tampered.state == "UNAVAILABLE"
    assert "model.onnx" in tampered.reason and "sha256" in tampered.reason


def test_tampered_model_is_refused_while_others_serve(zoo_stub, inference, onnx_reference):
    image = DIGITS[0].read_bytes()
    assert_status(
        lambda: zoo_stub.Classify(zoo_pb2.ClassifyRequest(model=TAMPERED, images=[image])),
        CODE.UNAVAILABLE,
        "sha256",
    )
    assert_status(
        lambda: inference.ModelInfer(infer_request(SAMPLE[:1], model=TAMPERED)),
        CODE.UNAVAILABLE,
        TAMPERED,
    )
    assert_still_serving(inference, onnx_reference)


# -- bad input: KServe v2 -----------------------------------------------------------------------

BAD_INFER = {
    "unknown model": (lambda: infer_request(SAMPLE[:1], model="nope"), CODE.NOT_FOUND, ["nope"]),
    "unknown version": (
        lambda: infer_request(SAMPLE[:1], version="7"),
        CODE.NOT_FOUND,
        ["'7'", "version 1"],
    ),
    "path as model name": (
        lambda: infer_request(SAMPLE[:1], model="../../etc"),
        CODE.NOT_FOUND,
        ["../../etc"],
    ),
    "wrong input name": (
        lambda: infer_request(SAMPLE[:1], name="image"),
        CODE.INVALID_ARGUMENT,
        ["'input'"],
    ),
    "wrong datatype": (
        lambda: infer_request(SAMPLE[:1], datatype="FP16"),
        CODE.INVALID_ARGUMENT,
        ["FP32"],
    ),
    "wrong shape": (
        lambda: infer_request(np.zeros((1, 1, 28, 28), np.float32)),
        CODE.INVALID_ARGUMENT,
        ["[-1, 1, 32, 32]"],
    ),
    "wrong rank": (
        lambda: infer_request(np.zeros((1, 1024), np.float32)),
        CODE.INVALID_ARGUMENT,
        ["rank 4"],
    ),
    "short byte length": (
        lambda: infer_request(SAMPLE[:1], raw=[b"\0" * 4000], shape=[1, 1, 32, 32]),
        CODE.INVALID_ARGUMENT,
        ["4000 bytes", "needs 4096"],
    ),
    "batch over max_batch_size": (
        lambda: infer_request(np.zeros((65, 1, 32, 32), np.float32)),
        CODE.INVALID_ARGUMENT,
        ["65", "max_batch_size 64"],
    ),
    "zero batch": (
        lambda: infer_request(np.zeros((0, 1, 32, 32), np.float32)),
        CODE.INVALID_ARGUMENT,
        ["at least 1"],
    ),
    "empty request": (
        lambda: grpc_service_pb2.ModelInferRequest(),
        CODE.INVALID_ARGUMENT,
        ["names no model"],
    ),
    "no inputs": (
        lambda: grpc_service_pb2.ModelInferRequest(model_name=MODEL),
        CODE.INVALID_ARGUMENT,
        ["takes 1 input", "'input'"],
    ),
    "no data": (
        lambda: infer_request(None, shape=[1, 1, 32, 32]),
        CODE.INVALID_ARGUMENT,
        ["carries no data"],
    ),
    "raw contents per input": (
        lambda: infer_request(SAMPLE[:1], raw=[b"\0" * 4096, b"\0" * 4096], shape=[1, 1, 32, 32]),
        CODE.INVALID_ARGUMENT,
        ["2 entries for 1 inputs"],
    ),
    "unknown output": (
        lambda: infer_request(SAMPLE[:1], outputs=[("probs", 0)]),
        CODE.INVALID_ARGUMENT,
        ["'probs'", "'logits'"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INFER))
def test_bad_infer_requests(case, inference, onnx_reference):
    make, code, fragments = BAD_INFER[case]
    assert_status(lambda: inference.ModelInfer(make(), timeout=10), code, *fragments)
    assert_still_serving(inference, onnx_reference)


def test_bad_classification_parameter(inference, onnx_reference):
    request = infer_request(SAMPLE[:1])
    request.outputs.add(name="logits").parameters["classification"].string_param = "three"
    assert_status(lambda: inference.ModelInfer(request), CODE.INVALID_ARGUMENT, "classification")
    assert_still_serving(inference, onnx_reference)


def test_unknown_model_metadata_config_and_readiness(inference):
    for call, request in (
        (inference.ModelMetadata, grpc_service_pb2.ModelMetadataRequest(name="../../etc")),
        (inference.ModelConfig, grpc_service_pb2.ModelConfigRequest(name="nope")),
        (inference.ModelReady, grpc_service_pb2.ModelReadyRequest(name="nope")),
        (inference.ModelStatistics, grpc_service_pb2.ModelStatisticsRequest(name="nope")),
    ):
        assert_status(lambda c=call, r=request: c(r), CODE.NOT_FOUND)


def test_oversized_message_is_resource_exhausted(inference, onnx_reference):
    from tests.serving.helpers import SHARED_SERVER_MAX_MESSAGE_MB

    limit = int(float(SHARED_SERVER_MAX_MESSAGE_MB) * 1024 * 1024)
    request = infer_request(SAMPLE[:1], raw=[b"\0" * (limit + 1)], shape=[1, 1, 32, 32])
    details = assert_status(lambda: inference.ModelInfer(request), CODE.RESOURCE_EXHAUSTED)
    assert str(limit) in details
    assert_still_serving(inference, onnx_reference)


def test_a_deadline_that_passes_in_the_servers_queue_is_answered_without_running(
    inference, onnx_reference
):
    """QUEUED keeps a lone request queued up to QUEUE_DELAY_S for its batch to fill. Requests
    whose deadline is shorter reach the server, leave its queue unrun and are answered
    DEADLINE_EXCEEDED; a neighbour with a longer deadline in the same queue is answered exactly."""

    def stats():
        request = grpc_service_pb2.ModelStatisticsRequest(name=QUEUED)
        (model,) = inference.ModelStatistics(request, timeout=10).model_stats
        return model

    before = stats()
    patient = inference.ModelInfer.future(infer_request(SAMPLE[:1], model=QUEUED), timeout=30)
    hasty = [
        inference.ModelInfer.future(infer_request(SAMPLE[1:2], model=QUEUED), timeout=0.2)
        for _ in range(3)
    ]
    for future in hasty:
        with pytest.raises(grpc.RpcError) as info:
            future.result()
        assert info.value.code() == CODE.DEADLINE_EXCEEDED
    np.testing.assert_array_equal(
        logits_of(patient.result()), reference_logits(onnx_reference, SAMPLE[:1])
    )
    after = stats()
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 3
    assert after.inference_count - before.inference_count == 1, "an expired request ran"
    assert after.execution_count - before.execution_count == 1
    assert_still_serving(inference, onnx_reference)


# -- bad input: images --------------------------------------------------------------------------


def _digit_array() -> np.ndarray:
    return np.asarray(Image.open(DIGITS[0]).convert("L"))


BAD_IMAGES = {
    "empty bytes": (b"", ["empty"]),
    "not an image": (b"hello, this is text and not a picture", ["not a PNG or JPEG"]),
    "truncated PNG": (None, ["corrupt or truncated"]),
    "corrupt PNG": (None, ["corrupt or truncated"]),
    "decompression bomb": (bomb_png(30_000, 30_000), ["too large"]),
    "bomb below twice the limit": (bomb_png(10_000, 10_000), ["too large"]),
    "GIF": (encode(Image.new("L", (8, 8)), "GIF"), ["not a PNG or JPEG"]),
}


def _bad_image(case: str) -> bytes:
    data = DIGITS[0].read_bytes()
    if case == "truncated PNG":
        return data[: len(data) // 2]
    if case == "corrupt PNG":
        corrupt = bytearray(data)
        for i in range(60, len(corrupt) - 20):
            corrupt[i] ^= 0x5A
        return bytes(corrupt)
    return BAD_IMAGES[case][0]


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images_are_invalid_argument(case, zoo_stub, inference, onnx_reference):
    images = [DIGITS[1].read_bytes(), _bad_image(case)]
    details = assert_status(
        lambda: zoo_stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=images)),
        CODE.INVALID_ARGUMENT,
        "image 1",
        *BAD_IMAGES[case][1],
    )
    assert len(details) < 400
    assert_still_serving(inference, onnx_reference)


def test_classify_request_errors(zoo_stub):
    image = DIGITS[0].read_bytes()
    assert_status(
        lambda: zoo_stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL)),
        CODE.INVALID_ARGUMENT,
        "no images",
    )
    assert_status(
        lambda: zoo_stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=[image], top_k=-1)),
        CODE.INVALID_ARGUMENT,
        "top_k",
    )
    assert_status(
        lambda: zoo_stub.Classify(zoo_pb2.ClassifyRequest(model="../../etc", images=[image])),
        CODE.NOT_FOUND,
    )


def _probabilities(zoo_stub, images: list[bytes]) -> np.ndarray:
    response = zoo_stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=images, top_k=10))
    out = np.zeros((len(images), 10))
    for row, result in enumerate(response.results):
        assert len(result.predictions) == 10
        for p in result.predictions:
            out[row, p.index] = p.probability
    return out


def test_unusual_pixel_formats_are_converted_sensibly(zoo_stub):
    grey = _digit_array()
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    palette = Image.fromarray(grey).convert("P")
    palette.info["transparency"] = 0
    images = {
        "grey": encode(Image.fromarray(grey)),
        "16-bit grey": encode(Image.fromarray(grey.astype(np.uint16) * 257)),
        "16-bit RGB": rgb16_png(np.dstack([grey, grey, grey]).astype(np.uint16) * 257),
        "RGBA": encode(Image.fromarray(rgba, mode="RGBA")),
        "palette with transparency": encode(palette, transparency=0),
        "CMYK JPEG": encode(Image.fromarray(grey).convert("CMYK"), "JPEG", quality=95),
        "1x1": encode(Image.new("L", (1, 1), 200)),
        "huge aspect": encode(Image.new("RGB", (2000, 3), (10, 200, 30))),
    }
    probabilities = dict(zip(images, _probabilities(zoo_stub, list(images.values())), strict=True))
    for name, p in probabilities.items():
        assert p.sum() == pytest.approx(1.0, abs=1e-4), name
    # Lossless conversions give exactly the greyscale answer.
    for name in ("16-bit grey", "16-bit RGB", "RGBA", "palette with transparency"):
        np.testing.assert_allclose(probabilities[name], probabilities["grey"], atol=1e-6)
    assert probabilities["CMYK JPEG"].argmax() == probabilities["grey"].argmax()


# -- health and reflection ----------------------------------------------------------------------


def test_health_overall_per_service_and_per_model(channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)

    def status(service: str) -> int:
        return stub.Check(health_pb2.HealthCheckRequest(service=service)).status

    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", "inference.GRPCInferenceService", "cnnzoo.v1.Zoo", MODEL):
        assert status(service) == serving, service
    assert status(TAMPERED) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert_status(lambda: status("no-such-service"), CODE.NOT_FOUND)


def test_reflection_lists_and_describes_the_services(channel):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {
        "inference.GRPCInferenceService",
        "cnnzoo.v1.Zoo",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    pool = DescriptorPool(database)
    infer = pool.FindServiceByName("inference.GRPCInferenceService").FindMethodByName("ModelInfer")
    assert infer.input_type.full_name == "inference.ModelInferRequest"
    assert infer.input_type.fields_by_name["raw_input_contents"].number == 7
    classify = pool.FindServiceByName("cnnzoo.v1.Zoo").FindMethodByName("Classify")
    assert classify.output_type.full_name == "cnnzoo.v1.ClassifyResponse"


# -- Explain ------------------------------------------------------------------------------------


def test_explain_over_grpc_equals_the_in_process_call(zoo_stub, repository):
    import io

    import torch

    from cnnzoo import zoo
    from cnnzoo.interpret.explain import METHODS, explain
    from cnnzoo.zoo.repository import ModelRepository

    model = zoo.build_model(MODEL, weights=repository / MODEL / "1" / "model.safetensors")
    image = DIGITS[0].read_bytes()
    preprocess = ModelRepository(repository).preprocess(MODEL)
    x = torch.from_numpy(preprocess.apply(Image.open(io.BytesIO(image)))[None])
    for method, target in [(m, None) for m in METHODS] + [("guided-backprop", 3)]:
        request = zoo_pb2.ExplainRequest(model=MODEL, image=image, method=method)
        if target is not None:
            request.target = target
        got = zoo_stub.Explain(request, timeout=60)
        expected = explain(model, x, method, target)
        assert (got.model, got.version, got.method) == (MODEL, "1", method)
        assert got.target == expected.target and got.label == str(expected.target)
        assert got.score == pytest.approx(expected.score, rel=1e-5)
        assert list(got.shape) == list(expected.attribution.shape) == [32, 32]
        np.testing.assert_allclose(
            np.asarray(got.attribution, np.float32).reshape(32, 32),
            expected.attribution,
            rtol=1e-4,
            atol=1e-6,
        )
        assert got.png[:8] == b"\x89PNG\r\n\x1a\n"
        assert got.png == expected.png


def test_explain_bad_requests(zoo_stub):
    image = DIGITS[0].read_bytes()
    assert_status(
        lambda: zoo_stub.Explain(zoo_pb2.ExplainRequest(model=MODEL, image=image, method="x")),
        CODE.INVALID_ARGUMENT,
        "guided-backprop",
    )
    assert_status(
        lambda: zoo_stub.Explain(
            zoo_pb2.ExplainRequest(model=MODEL, image=image, method="gradient", target=10)
        ),
        CODE.INVALID_ARGUMENT,
        "target 10",
    )
    assert_status(
        lambda: zoo_stub.Explain(
            zoo_pb2.ExplainRequest(model=MODEL, image=b"junk", method="gradient")
        ),
        CODE.INVALID_ARGUMENT,
        "not a PNG or JPEG",
    )
    assert_status(
        lambda: zoo_stub.Explain(
            zoo_pb2.ExplainRequest(model="../../etc", image=image, method="gradient")
        ),
        CODE.NOT_FOUND,
    )
