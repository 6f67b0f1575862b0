"""The KServe v2 REST API of the shared server: tritonclient.http unchanged (JSON and binary
tensors, classification, statistics, config, shared memory), raw HTTP for every bad body."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.serving.checks import SAMPLE, assert_still_serving, reference_logits
from tests.serving.helpers import MODEL, SHARED_SERVER_MAX_MESSAGE_MB, TAMPERED

X = SAMPLE[:2]


@pytest.fixture(scope="module")
def client(server):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    yield client
    client.close()


def request(server, method: str, path: str, body: bytes = b"", headers=None):
    """One raw HTTP request; returns (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def tensor(x: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    t = httpclient.InferInput("input", list(x.shape), "FP32")
    t.set_data_from_numpy(x, binary_data=binary)
    return t


def test_health_metadata_config_and_statistics(server, client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(TAMPERED)
    metadata = client.get_server_metadata()
    assert metadata["name"] == "cnnzoo"
    assert {"classification", "binary_tensor_data", "system_shared_memory"} <= set(
        metadata["extensions"]
    )
    assert client.get_model_metadata(MODEL) == {
        "name": MODEL,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 32, 32]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    config = client.get_model_config(MODEL, "1")
    assert config["name"] == MODEL and config["max_batch_size"] == 64
    assert config["input"][0]["dims"] == [1, 32, 32]  # numbers, as Triton writes them
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    client.infer(MODEL, [tensor(X)])
    (stats,) = client.get_inference_statistics(MODEL)["model_stats"]
    assert stats["name"] == MODEL and stats["inference_count"] >= 2
    assert stats["inference_stats"]["success"]["count"] >= 1
    every = client.get_inference_statistics()["model_stats"]
    assert MODEL in {s["name"] for s in every}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_onnxruntime(client, onnx_reference, binary):
    expected = reference_logits(onnx_reference, X)
    output = httpclient.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer(MODEL, [tensor(X, binary)], outputs=[output], request_id="r1")
    assert result.get_response()["id"] == "r1"
    assert result.get_response()["model_version"] == "1"
    logits = result.as_numpy("logits")
    assert logits.dtype == np.float32 and logits.shape == (2, 10)
    np.testing.assert_array_equal(logits, expected)
    plain = client.infer(MODEL, [tensor(X, binary)])  # no outputs named: binary, as Triton
    np.testing.assert_array_equal(plain.as_numpy("logits"), expected)


def test_compressed_bodies_and_the_classification_extension(client, onnx_reference):
    expected = reference_logits(onnx_reference, X)
    result = client.infer(
        MODEL,
        [tensor(X)],
        outputs=[httpclient.InferRequestedOutput("logits", binary_data=False, class_count=3)],
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    for row, items in enumerate(result.as_numpy("logits").tolist()):  # JSON strings
        indices = [int(item.split(":")[1]) for item in items]
        assert indices == list(np.argsort(-expected[row], kind="stable")[:3])
        assert items[0].split(":")[0] == f"{expected[row, indices[0]]:f}"


def test_shared_memory_over_rest(client, onnx_reference):
    handle = shm.create_shared_memory_region("rest_in", "/cnnzoo_rest_in", X.nbytes)
    try:
        shm.set_shared_memory_region(handle, [X])
        client.register_system_shared_memory("rest_in", "/cnnzoo_rest_in", X.nbytes)
        assert client.get_system_shared_memory_status("rest_in") == [
            {"name": "rest_in", "key": "/cnnzoo_rest_in", "offset": 0, "byte_size": X.nbytes}
        ]
        t = httpclient.InferInput("input", list(X.shape), "FP32")
        t.set_shared_memory("rest_in", X.nbytes)
        result = client.infer(MODEL, [t])
        np.testing.assert_array_equal(
            result.as_numpy("logits"), reference_logits(onnx_reference, X)
        )
        with pytest.raises(InferenceServerException) as info:
            client.register_system_shared_memory("rest_in", "/cnnzoo_rest_in", X.nbytes)
        assert info.value.status() == "400" and "already registered" in info.value.message()
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status() == []
        assert client.get_cuda_shared_memory_status() == []
        client.unregister_cuda_shared_memory()
    finally:
        shm.destroy_shared_memory_region(handle)


def json_body(data, shape=(1, 1, 32, 32), datatype: str = "FP32") -> bytes:
    """An infer request with one JSON tensor."""
    tensor = {"name": "input", "shape": list(shape), "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def binary_body(x: np.ndarray, size: int | None = None) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes if size is None else size},
                }
            ]
        }
    ).encode()
    return header + x.tobytes(), len(header)


INFER = f"/v2/models/{MODEL}/infer"
MB = int(float(SHARED_SERVER_MAX_MESSAGE_MB) * 2**20)

# name: (method, path, body, headers, status, fragment of the error)
BAD_REQUESTS = {
    "malformed JSON": ("POST", INFER, b'{"inputs": [', {}, 400, "is not valid JSON"),
    "not an object": ("POST", INFER, b"[1, 2]", {}, 400, "must be a JSON object"),
    "no inputs": ("POST", INFER, b"{}", {}, 400, "needs 'inputs'"),
    "strings in an FP32 tensor": (
        "POST",
        INFER,
        json_body([["a"] * 1024]),
        {},
        400,
        "must hold only FP32 values (JSON numbers), got strings",
    ),
    "ragged rows": (
        "POST",
        INFER,
        json_body([[1.0, 2.0], [3.0]]),
        {},
        400,
        "rows of different lengths",
    ),
    "too few values": (
        "POST",
        INFER,
        json_body([1.0, 2.0]),
        {},
        400,
        "has 8 bytes of raw data; shape [1, 1, 32, 32] FP32 needs 4096",
    ),
    "a shape that is not integers": (
        "POST",
        INFER,
        json_body([], shape=(1, "a")),
        {},
        400,
        "shape must be an integer >= 0",
    ),
    "wrong datatype": (
        "POST",
        INFER,
        json_body(np.zeros((1, 1, 32, 32), int).tolist(), datatype="INT32"),
        {},
        400,
        "must be FP32, got 'INT32'",
    ),
    "header length beyond the body": (
        "POST",
        INFER,
        binary_body(X[:1])[0],
        {"Inference-Header-Content-Length": "999999"},
        400,
        "Inference-Header-Content-Length is 999999, but the body has",
    ),
    "header length not a number": (
        "POST",
        INFER,
        binary_body(X[:1])[0],
        {"Inference-Header-Content-Length": "lots"},
        400,
        "must be a number of bytes",
    ),
    "header length cutting the JSON": (
        "POST",
        INFER,
        binary_body(X[:1])[0],
        {"Inference-Header-Content-Length": "20"},
        400,
        "is not valid JSON",
    ),
    "binary_data_size beyond the body": (
        "POST",
        INFER,
        binary_body(X[:1], size=8192)[0],
        {"Inference-Header-Content-Length": str(binary_body(X[:1])[1])},
        400,
        "binary_data_size 8192, but only 4096 bytes",
    ),
    "binary data left over": (
        "POST",
        INFER,
        binary_body(X[:1], size=2048)[0],
        {"Inference-Header-Content-Length": str(binary_body(X[:1])[1])},
        400,
        "4096 bytes of binary tensor data after its JSON header, but the inputs' "
        "binary_data_size add up to 2048",
    ),
    "unknown model": ("POST", "/v2/models/nope/infer", b"{}", {}, 404, "unknown model 'nope'"),
    "unknown version": ("GET", f"/v2/models/{MODEL}/versions/7", b"", {}, 404, "no version '7'"),
    "unavailable model": (
        "POST",
        f"/v2/models/{TAMPERED}/infer",
        json_body(X.tolist(), X.shape),
        {},
        503,
        "sha256",
    ),
    "unknown route": ("GET", "/v2/nothing/here", b"", {}, 404, "no such endpoint: GET /v2/nothing"),
    "unknown prefix": ("GET", "/metrics", b"", {}, 404, "no such endpoint"),
    "wrong method": ("GET", INFER, b"", {}, 405, "GET is not allowed on"),
    "wrong method on health": ("POST", "/v2/health/live", b"", {}, 405, "use GET"),
    "body over the limit": (
        "POST",
        INFER,
        b" " * (MB + 1),
        {},
        413,
        f"larger than this server's limit of {MB} bytes",
    ),
    "bad register body": (
        "POST",
        "/v2/systemsharedmemory/region/r/register",
        b'{"key": 3}',
        {},
        400,
        "a register request is",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_triton_errors_and_the_server_keeps_serving(
    case, server, client, inference, onnx_reference
):
    method, path, body, headers, status, fragment = BAD_REQUESTS[case]
    code, response_headers, data = request(server, method, path, body, headers)
    assert code == status, data
    assert response_headers["Content-Type"].startswith("application/json")
    message = json.loads(data)["error"]
    assert fragment in message and "Traceback" not in message, message
    if status == 405:
        assert response_headers["Allow"] in ("GET", "POST")
    assert_still_serving(inference, onnx_reference)
    np.testing.assert_array_equal(
        client.infer(MODEL, [tensor(X)]).as_numpy("logits"), reference_logits(onnx_reference, X)
    )
