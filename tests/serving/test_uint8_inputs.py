"""A version exported with `--input-dtype uint8`: its metadata says UINT8, ModelInfer takes pixels
(a quarter of the bytes) and answers as the fp32 model does, Classify sends it pixels."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from cnnzoo.protos import zoo_pb2, zoo_pb2_grpc
from tests.serving.helpers import DIGITS, MODEL, ServerProcess, export


@pytest.fixture(scope="module")
def uint8_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("uint8-repository")
    export(repository, "--input-dtype", "uint8")
    log = tmp_path_factory.mktemp("uint8-logs") / "server.log"
    process = ServerProcess(repository, log).wait_ready()
    yield process
    assert process.stop() == 0, process.log()


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The shipped digits as uint8 pixels and as the fp32 input LeNet-5's preprocessing makes."""
    from cnnzoo.zoo.registry import get_entry

    preprocess = get_entry(MODEL).preprocess
    pixels = np.stack([preprocess.pixels(Image.open(path)) for path in DIGITS[:6]])
    return pixels, np.stack([preprocess.normalise(p) for p in pixels])


def test_uint8_version_says_so_and_answers_like_the_fp32_model(uint8_server, onnx_reference):
    client = triton.InferenceServerClient(uint8_server.target)
    metadata = client.get_model_metadata(MODEL, as_json=True)
    assert metadata["inputs"] == [
        {"name": "input", "datatype": "UINT8", "shape": ["-1", "1", "32", "32"]}
    ]
    assert client.get_model_config(MODEL, as_json=True)["config"]["input"][0]["data_type"] == (
        "TYPE_UINT8"
    )
    pixels, normalised = digits()
    tensor = triton.InferInput("input", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    logits = client.infer(MODEL, [tensor]).as_numpy("logits")
    expected = onnx_reference.run(["logits"], {"input": normalised})[0]
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    fp32 = triton.InferInput("input", list(pixels.shape), "FP32")
    fp32.set_data_from_numpy(normalised)
    with pytest.raises(InferenceServerException, match="must be UINT8, got 'FP32'"):
        client.infer(MODEL, [fp32])
    client.close()


def test_classify_sends_a_uint8_version_pixels(uint8_server, zoo_stub):
    """Classify answers the same through the uint8 version as through the fp32 one."""

    images = [path.read_bytes() for path in DIGITS[:6]]
    request = zoo_pb2.ClassifyRequest(model=MODEL, images=images, top_k=3)
    with grpc.insecure_channel(uint8_server.target) as channel:
        ours = zoo_pb2_grpc.ZooStub(channel).Classify(request, timeout=30)
    reference = zoo_stub.Classify(request, timeout=30)
    for got, want, path in zip(ours.results, reference.results, DIGITS, strict=False):
        assert [p.index for p in got.predictions] == [p.index for p in want.predictions]
        assert got.predictions[0].label == path.parent.name
        for a, b in zip(got.predictions, want.predictions, strict=True):
            assert a.probability == pytest.approx(b.probability, abs=1e-5)
