"""Any Triton ONNX repository serves: config.pbtxt + <version>/model.onnx is enough.

The repository is written here by hand in the layout of Triton's own examples (no manifest, no
cnnzoo parameters): `lenet` is the shipped LeNet-5's model.onnx with a Triton config and its own
label file; `auto` has a config.pbtxt naming only the platform, completed from the graph as
Triton's auto-complete does; `fragile` is a graph that fails at run time for some inputs (a
BACKEND failure). tritonclient is the client; `--require-manifest` refuses what has no manifest.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from cnnzoo.protos import zoo_pb2, zoo_pb2_grpc
from tests.serving.helpers import DIGITS, MODEL, ServerProcess

LENET_CONFIG = """\
name: "lenet"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 1, 32, 32 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 10 ]
    label_filename: "mnist_labels.txt"
  }
]
"""
# As Triton's densenet_onnx example: no batch dimension, the graph's [1, ...] shapes reshaped.
UNBATCHED_CONFIG = """\
name: "unbatched"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ], reshape: { shape: [ 1, 4 ] } } ]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 3 ]
    reshape: { shape: [ 1, 3 ] }
    label_filename: "labels.txt"
  }
]
"""
WRONG_CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 2
input [ { name: "x", data_type: TYPE_FP32, dims: [ 5 ] } ]
"""
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def tiny_graph(path: Path, *, fragile: bool = False, batch: str | int = "batch") -> None:
    """x FP32 [N, 4] -> y FP32 [N, 3] = x @ W (`batch`: N, a name for a dynamic axis). `fragile`:
    x is first reshaped to [-1, 4 + max(x)] (int), which fails as soon as an input holds a 1
    (zeros, as in warm-up, are fine)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    nodes, inits, source = [], [weights], "x"
    if fragile:
        inits += [
            numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
            numpy_helper.from_array(np.array(4, np.int64), "four"),
            numpy_helper.from_array(np.array([0], np.int64), "axes"),
        ]
        nodes += [
            helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
            helper.make_node("Cast", ["m"], ["k"], to=TensorProto.INT64),
            helper.make_node("Add", ["k", "four"], ["width"]),
            helper.make_node("Unsqueeze", ["width", "axes"], ["width1"]),
            helper.make_node("Concat", ["minus_one", "width1"], ["shape"], axis=0),
            helper.make_node("Reshape", ["x", "shape"], ["x2"]),
        ]
        source = "x2"
    nodes.append(helper.make_node("MatMul", [source, "W"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def triton_repository(repository: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("triton") / "model_repository"
    (root / "lenet" / "1").mkdir(parents=True)
    shutil.copy(repository / MODEL / "1" / "model.onnx", root / "lenet" / "1" / "model.onnx")
    (root / "lenet" / "config.pbtxt").write_text(LENET_CONFIG)
    (root / "lenet" / "mnist_labels.txt").write_text("\n".join(LABELS) + "\n")
    for name, fragile in (("auto", False), ("fragile", True), ("wrong", False)):
        tiny_graph(root / name / "1" / "model.onnx", fragile=fragile)
        (root / name / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    (root / "wrong" / "config.pbtxt").write_text(WRONG_CONFIG)  # contradicts its graph
    tiny_graph(root / "unbatched" / "1" / "model.onnx", batch=1)
    (root / "unbatched" / "config.pbtxt").write_text(UNBATCHED_CONFIG)
    (root / "unbatched" / "labels.txt").write_text("a\nb\nc\n")
    return root


@pytest.fixture(scope="module")
def plain(triton_repository: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(triton_repository, triton_repository.parent / "server.log").wait_ready()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(scope="module")
def client(plain: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(plain.target) as c:
        yield c


def infer(client, model: str, name: str, x: np.ndarray, **output) -> triton.InferResult:
    tensor = triton.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [triton.InferRequestedOutput(*output["requested"])] if output else None
    return client.infer(model, [tensor], outputs=outputs)


def test_a_hand_written_triton_model_answers_like_onnxruntime(client, onnx_reference):
    assert client.is_model_ready("lenet")
    x = np.random.default_rng(8).standard_normal((3, 1, 32, 32)).astype(np.float32)
    expected = onnx_reference.run(["logits"], {"input": x})[0]
    np.testing.assert_array_equal(infer(client, "lenet", "input", x).as_numpy("logits"), expected)
    top = infer(client, "lenet", "input", x, requested=("logits", 2)).as_numpy("logits")
    for row, items in enumerate(top.tolist()):
        _, index, label = items[0].decode().split(":")
        assert int(index) == expected[row].argmax() and label == LABELS[int(index)]
    config = client.get_model_config("lenet", as_json=True)["config"]
    assert config["max_batch_size"] == 16 and "parameters" not in config


def test_config_left_out_is_completed_from_the_graph(client):
    config = client.get_model_config("auto", as_json=True)["config"]
    assert config["name"] == "auto" and config["max_batch_size"] == 4  # Triton's default
    assert "dynamic_batching" in config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("x", "TYPE_FP32", ["4"])
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("y", "TYPE_FP32", ["3"])
    ]
    metadata = client.get_model_metadata("auto", as_json=True)
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y = infer(client, "auto", "x", x).as_numpy("y")
    np.testing.assert_array_equal(y, x @ np.arange(12, dtype=np.float32).reshape(4, 3))
    with pytest.raises(InferenceServerException) as info:  # batch over the completed maximum
        infer(client, "auto", "x", np.zeros((5, 4), np.float32))
    assert "max_batch_size 4" in info.value.message()


def test_a_model_without_batch_dimension_as_in_tritons_examples(client):
    metadata = client.get_model_metadata("unbatched", as_json=True)
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["4"]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["3"]}]
    x = np.array([1.0, 0.0, 2.0, 0.5], np.float32)
    y = infer(client, "unbatched", "x", x).as_numpy("y")
    np.testing.assert_array_equal(y, x @ np.arange(12, dtype=np.float32).reshape(4, 3))
    top = infer(client, "unbatched", "x", x, requested=("y", 2)).as_numpy("y")
    assert top.shape == (2,)
    assert [item.decode().split(":")[1:] for item in top] == [["2", "c"], ["1", "b"]]
    with pytest.raises(InferenceServerException) as info:
        infer(client, "unbatched", "x", x[None])  # a batch axis it does not have
    assert "must have rank 1 (shape [4])" in info.value.message()


def test_a_graph_that_fails_at_run_time_is_a_backend_failure(plain, client):
    from tests.serving.test_metrics import families, samples

    assert infer(client, "fragile", "x", np.zeros((1, 4), np.float32)).as_numpy("y").shape == (1, 3)
    with pytest.raises(InferenceServerException) as info:
        infer(client, "fragile", "x", np.ones((1, 4), np.float32))
    assert info.value.status() == "StatusCode.INTERNAL"
    assert "'fragile' version 1 failed to run" in info.value.message()
    failures = samples(families(plain)["nv_inference_request_failure"], model="fragile")
    by_reason = {dict(rest)["reason"]: value for (_, rest), value in failures.items()}
    assert by_reason == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 1, "OTHER": 0}
    assert infer(client, "fragile", "x", np.zeros((1, 4), np.float32)).as_numpy("y").shape == (1, 3)


def test_classify_and_explain_name_what_the_model_lacks(plain):
    image = DIGITS[0].read_bytes()
    with grpc.insecure_channel(plain.target) as channel:
        zoo = zoo_pb2_grpc.ZooStub(channel)
        for call, request, operation in (
            (zoo.Classify, zoo_pb2.ClassifyRequest(model="lenet", images=[image]), "Classify"),
            (
                zoo.Explain,
                zoo_pb2.ExplainRequest(model="lenet", image=image, method="gradient"),
                "Explain",
            ),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
            details = info.value.details()
            assert operation in details and "preprocessing" in details, details
        unbatched = zoo_pb2.ClassifyRequest(model="unbatched", images=[image])
        with pytest.raises(grpc.RpcError) as info:
            zoo.Classify(unbatched, timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no batch dimension (max_batch_size 0)" in info.value.details()
        listing = {m.name: m for m in zoo.ListModels(zoo_pb2.ListModelsRequest()).models}
    assert {n: m.state for n, m in listing.items()} == {
        "auto": "READY",
        "fragile": "READY",
        "lenet": "READY",
        "unbatched": "READY",
        "wrong": "UNAVAILABLE",  # the others serve on
    }
    assert listing["lenet"].num_classes == 10
    assert "dims [5] in config.pbtxt but [4] in model.onnx" in listing["wrong"].reason


def test_require_manifest_refuses_versions_without_one(triton_repository, tmp_path):
    process = ServerProcess(triton_repository, tmp_path / "server.log", "--require-manifest")
    try:
        process.wait_ready()
        with grpc.insecure_channel(process.target) as channel:
            zoo = zoo_pb2_grpc.ZooStub(channel)
            listing = zoo.ListModels(zoo_pb2.ListModelsRequest()).models
        assert {m.name: m.state for m in listing} == dict.fromkeys(
            ("auto", "fragile", "lenet", "unbatched", "wrong"), "UNAVAILABLE"
        )
        assert all("no manifest.json" in m.reason for m in listing)
    finally:
        assert process.stop() == 0, process.log()
