"""Explain on the exported explanation graphs, through a real `cnnzoo serve`.

The repository is what `cnnzoo export` writes by default: each classifier with its explanation
models beside it. The server serves the classifiers, runs Explain on the graphs with ONNX
Runtime, answers every method as the PyTorch reference does, and never loads torch.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo import zoo
from cnnzoo.interpret.explain import explain
from cnnzoo.protos import zoo_pb2, zoo_pb2_grpc
from cnnzoo.serving.explain import CLASS_METHODS
from tests.serving.helpers import MODEL, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DIGIT = ROOT / "examples" / "digits" / "7" / "test-00000.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cnnzoo.cli import main

    repository = tmp_path_factory.mktemp("with-explanations")
    assert main(["export", MODEL, "--repository", str(repository)]) == 0  # explanations: all
    log = tmp_path_factory.mktemp("log") / "server.log"
    process = ServerProcess(repository, log).wait_ready()
    channel = grpc.insecure_channel(process.target)
    yield process, zoo_pb2_grpc.ZooStub(channel), repository
    channel.close()
    process.stop()


def test_the_server_serves_the_classifiers_and_explains_with_their_graphs(server):
    process, stub, repository = server
    listed = stub.ListModels(zoo_pb2.ListModelsRequest(), timeout=30)
    assert [m.name for m in listed.models] == [MODEL]  # explanation models are not classifiers
    assert "ERROR" not in process.log(), process.log()
    image = DIGIT.read_bytes()
    x = torch.from_numpy(zoo.get_entry(MODEL).preprocess.apply(Image.open(DIGIT)))[None]
    model = zoo.build_model(MODEL, weights="default")
    for method in CLASS_METHODS:
        got = stub.Explain(
            zoo_pb2.ExplainRequest(model=MODEL, image=image, method=method), timeout=60
        )
        expected = explain(model, x, method)
        assert got.target == expected.target == 7, method
        assert got.score == pytest.approx(expected.score, rel=1e-5)
        reference = expected.attribution
        peak = float(np.abs(reference).max())
        mine = np.asarray(got.attribution, np.float32).reshape(reference.shape)
        assert float(np.abs(mine - reference).max()) <= 1e-4 * peak + 1e-7, method


def test_grad_cam_takes_a_layer_by_name_and_refuses_an_unknown_one(server):
    _, stub, _ = server
    image = DIGIT.read_bytes()
    default = stub.Explain(
        zoo_pb2.ExplainRequest(model=MODEL, image=image, method="grad-cam"), timeout=60
    )
    named = stub.Explain(
        zoo_pb2.ExplainRequest(model=MODEL, image=image, method="grad-cam", layer="features.c3"),
        timeout=60,
    )
    assert list(default.attribution) != list(named.attribution)
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(
            zoo_pb2.ExplainRequest(model=MODEL, image=image, method="grad-cam", layer="nope"),
            timeout=60,
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "features.c3" in info.value.details()  # the valid names are listed
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(
            zoo_pb2.ExplainRequest(model=MODEL, image=image, method="gradient", layer="x"),
            timeout=60,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_explanations_run_in_batches_and_each_gets_its_own_map(server):
    _, stub, _ = server
    digits = sorted((ROOT / "examples" / "digits").glob("*/*.png"))[:12]

    def call(path: Path) -> tuple[int, int]:
        got = stub.Explain(
            zoo_pb2.ExplainRequest(model=MODEL, image=path.read_bytes(), method="guided-backprop"),
            timeout=60,
        )
        return int(path.parent.name), got.target

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(call, digits))
    assert sum(label == target for label, target in answers) >= 11  # the shipped LeNet-5


def test_the_server_process_never_loads_torch(server):
    process, stub, _ = server
    stub.Explain(
        zoo_pb2.ExplainRequest(model=MODEL, image=DIGIT.read_bytes(), method="grad-cam"),
        timeout=60,
    )
    stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=[DIGIT.read_bytes()]), timeout=60)
    maps = Path(f"/proc/{process.proc.pid}/maps").read_text()
    libraries = {line.split()[-1] for line in maps.splitlines() if ".so" in line}
    assert not [lib for lib in libraries if "torch" in Path(lib).name], sorted(libraries)
    assert any("onnxruntime" in lib for lib in libraries)  # the check can see libraries


def _post(port: int, path: str, body: bytes) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": "image/png"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rest_classify_and_explain_answer_as_the_rpcs_do(server):
    import base64
    import io

    process, stub, _ = server
    image = DIGIT.read_bytes()
    status, classified = _post(process.http_port, f"/v2/models/{MODEL}/classify?top_k=3", image)
    assert status == 200 and classified["model"] == MODEL
    assert [p["label"] for p in classified["predictions"]][0] == "7"
    assert len(classified["predictions"]) == 3
    path = f"/v2/models/{MODEL}/explain?method=grad-cam&layer=features.c3&target=2&map=1"
    status, explained = _post(process.http_port, path, image)
    assert status == 200, explained
    rpc = stub.Explain(
        zoo_pb2.ExplainRequest(
            model=MODEL, image=image, method="grad-cam", layer="features.c3", target=2
        ),
        timeout=60,
    )
    assert explained["target"] == rpc.target == 2 and explained["shape"] == [32, 32]
    assert explained["attribution"] == pytest.approx(list(rpc.attribution), rel=1e-6, abs=1e-9)
    assert base64.b64decode(explained["png"]) == rpc.png
    with Image.open(io.BytesIO(base64.b64decode(explained["png"]))) as picture:
        assert picture.size == (32, 32)
    status, error = _post(process.http_port, f"/v2/models/{MODEL}/explain?method=nope", image)
    assert status == 400 and "Explain answers" in error["error"]
    status, error = _post(process.http_port, f"/v2/models/{MODEL}/explain?target=x", image)
    assert status == 400 and "target" in error["error"]
    status, error = _post(process.http_port, "/v2/models/missing/explain", image)
    assert status == 404
    status, error = _post(process.http_port, f"/v2/models/{MODEL}/classify", b"not an image")
    assert status == 400, error


def test_quality_figures_on_request_through_the_classifiers_batcher(server):
    process, stub, _ = server
    image = DIGIT.read_bytes()
    plain = stub.Explain(
        zoo_pb2.ExplainRequest(model=MODEL, image=image, method="grad-cam"), timeout=60
    )
    assert not plain.quality  # only when asked
    measured = stub.Explain(
        zoo_pb2.ExplainRequest(model=MODEL, image=image, method="grad-cam", quality=True),
        timeout=60,
    )
    figures = dict(measured.quality)
    assert set(figures) == {"deletion_auc", "insertion_auc", "average_drop",
                            "increase_in_confidence"}  # fmt: skip
    assert all(0.0 <= v <= 1.0 for v in figures.values()), figures
    # the same figures as the library computes in process with PyTorch's model
    from cnnzoo.interpret.quality.curves import perturbation_curves
    from cnnzoo.interpret.quality.settings import QualitySettings

    model = zoo.build_model(MODEL, weights="default").eval()
    x = zoo.get_entry(MODEL).preprocess.apply(Image.open(DIGIT))[None]

    def logits(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(images, np.float32))).numpy()

    maps = np.asarray(measured.attribution, np.float64).reshape(1, 32, 32)
    settings = QualitySettings(steps=16, fillings=("mean",), batch_size=64)
    curves = perturbation_curves(logits, x, np.array([7]), {"m": maps}, settings, "mean")["m"]
    assert figures["deletion_auc"] == pytest.approx(float(curves.deletion.area()[0]), abs=1e-5)
    assert figures["insertion_auc"] == pytest.approx(float(curves.insertion.area()[0]), abs=1e-5)
    status, answer = _post(
        process.http_port, f"/v2/models/{MODEL}/explain?method=gradient&quality=1", image
    )
    assert status == 200 and set(answer["quality"]) == {"deletion_auc", "insertion_auc"}


def _reference_outputs(repository: Path, name: str, feeds: dict) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_model_infer_on_explanation_models_with_tritonclient(server, protocol: str) -> None:
    """tritonclient calls `MODEL.METHOD` as it would on Triton: several inputs, several outputs,
    the same numbers as the exported graph run in process."""
    if protocol == "grpc":
        import tritonclient.grpc as client_module

        url = server[0].target
    else:
        import tritonclient.http as client_module

        url = f"127.0.0.1:{server[0].http_port}"
    process, _, repository = server
    client = client_module.InferenceServerClient(url)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 32, 32)).astype(np.float32)
    cases = {
        f"{MODEL}.grad-cam": {"target": np.array([[7], [-1], [2]], np.int64),
                              "layer": np.full((3, 1), -1, np.int64)},
        f"{MODEL}.deconvnet-unit": {"layer": np.full((3, 1), 3, np.int64),
                                    "channel": np.array([[0], [5], [9]], np.int64),
                                    "position": np.array([[-1, -1], [2, 3], [-1, -1]], np.int64)},
        f"{MODEL}.activations": {},
    }  # fmt: skip
    for name, extra in cases.items():
        feeds = {"input": x, **extra}
        inputs = []
        for key, value in feeds.items():
            tensor = client_module.InferInput(
                key, list(value.shape), "FP32" if key == "input" else "INT64"
            )
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        answer = client.infer(name, inputs)
        expected = _reference_outputs(repository, name, feeds)
        assert len(expected) >= 3, name
        for output, value in expected.items():
            got = answer.as_numpy(output)
            assert got is not None and got.shape == value.shape, (name, output)
            np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6, err_msg=f"{name} {output}")
    missing = [inputs[0]]  # the activations' input alone, sent to grad-cam
    with pytest.raises(client_module.InferenceServerException, match="takes the inputs"):
        client.infer(f"{MODEL}.grad-cam", missing)
    with pytest.raises(client_module.InferenceServerException, match="unknown model"):
        client.infer(f"{MODEL}.no-such-method", missing)
    client.close()
    assert "Traceback" not in process.log()


def test_explanation_models_answer_metadata_config_readiness_and_statistics(server) -> None:
    """What Triton answers about any model, `MODEL.METHOD` answers too: its inputs and outputs,
    a config with dynamic batching, ready where its classifier is, and statistics that count
    the calls made to it (ModelInfer and Explain)."""
    import tritonclient.grpc as triton

    process, stub, _ = server
    name = f"{MODEL}.grad-cam"
    with triton.InferenceServerClient(process.target) as client:
        metadata = client.get_model_metadata(name, as_json=True)
        assert metadata["name"] == name and metadata["versions"] == ["1"]
        assert {i["name"]: i["datatype"] for i in metadata["inputs"]} == {
            "input": "FP32", "target": "INT64", "layer": "INT64"
        }  # fmt: skip
        assert metadata["inputs"][0]["shape"] == ["-1", "1", "32", "32"]
        assert {"attribution", "logits", "target_used"} <= {o["name"] for o in metadata["outputs"]}
        config = client.get_model_config(name, as_json=True)["config"]
        assert config["name"] == name and config["platform"] == "onnxruntime_onnx"
        assert int(config["max_batch_size"]) >= 1 and "dynamic_batching" in config
        assert [i["name"] for i in config["input"]] == ["input", "target", "layer"]
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
        assert not client.is_model_ready(name, "2")

        before = client.get_inference_statistics(name, as_json=True)["model_stats"][0]
        x = np.zeros((2, 1, 32, 32), np.float32)
        inputs = [triton.InferInput("input", [2, 1, 32, 32], "FP32"),
                  triton.InferInput("target", [2, 1], "INT64"),
                  triton.InferInput("layer", [2, 1], "INT64")]  # fmt: skip
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(np.array([[1], [-1]], np.int64))
        inputs[2].set_data_from_numpy(np.full((2, 1), -1, np.int64))
        client.infer(name, inputs)
        after = client.get_inference_statistics(name, as_json=True)["model_stats"][0]
        counted = int(before["inference_stats"]["success"].get("count", 0))
        assert int(after["inference_stats"]["success"]["count"]) == counted + 1
        assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 2
        everything = client.get_inference_statistics(as_json=True)["model_stats"]
        assert name in {s["name"] for s in everything}
        with pytest.raises(triton.InferenceServerException, match="unknown model"):
            client.get_model_metadata(f"{MODEL}.no-such-method")


def test_perf_analyzer_drives_an_explanation_model(server, tmp_path) -> None:
    """perf_analyzer reads the explanation model's metadata and config and sends it requests
    (zeros: target 0, the default layer) as it would to Triton; the server counts them."""
    import csv
    import subprocess

    import tritonclient.grpc as triton

    from tests.tools import require_perf_analyzer

    binary = require_perf_analyzer()
    process = server[0]
    name = f"{MODEL}.guided-backprop"
    report = tmp_path / "report.csv"
    result = subprocess.run(
        [str(binary), "-m", name, "-u", process.target, "-i", "grpc", "--input-data", "zero",
         "--concurrency-range", "2", "--request-count", "100", "-f", str(report)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Unable" not in output and "Failed" not in output, output
    with open(report) as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["Inferences/Second"]) > 0
    with triton.InferenceServerClient(process.target) as client:
        stats = client.get_inference_statistics(name, as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) >= 100
    assert "Traceback" not in process.log()
