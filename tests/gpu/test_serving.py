"""`cnnzoo serve --device cuda`, driven over gRPC by tritonclient from this (another) process.

For LeNet-5, ResNet-20 and ResNet-50 (untrained), fp32 and fp16: every model reports CUDA in
ListModels, in the execution-provider metric and in the log (with IO binding); the answers equal
in-process ONNX Runtime CUDA (the same session settings) exactly, and PyTorch within 1e-3 (fp32)
or with the same top-1 (fp16). `--device cuda` refuses a graph with a node ONNX Runtime would put
on the CPU, and refuses to start, saying why, where no device is visible.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cnnzoo.errors import UnsupportedModel
from cnnzoo.serving.client import ZooClient
from cnnzoo.serving.runtime import CUDA, NO_CPU_FALLBACK, OnnxModel, RuntimeOptions
from cnnzoo.zoo.repository import ModelRepository
from tests.gpu.repository import MODELS
from tests.gpu.target import Target
from tests.serving.helpers import ServerProcess, cnnzoo

ROWS = 8  # a warmed batch size: the server runs it as it is, as the in-process session does
# fp16 rounds logits by about 5e-4 of the largest (ResNet-50, measured); below this margin
# (relative to the top logit) a top-1 could swap
FP16_MARGIN = 0.01


def _inputs(model: str, rows: int = ROWS) -> np.ndarray:
    shape = {"lenet5-mnist": (1, 32, 32), "resnet20-cifar10": (3, 32, 32)}.get(model, (3, 224, 224))
    seed = MODELS.index(model)
    return np.random.default_rng(seed).standard_normal((rows, *shape)).astype(np.float32)


def _metrics(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The server's /metrics: {sample name: [(labels, value), ...]}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _pytorch_logits(repository: Path, model: str, x: np.ndarray) -> np.ndarray:
    import torch

    module = ModelRepository(repository).torch_model(model, 1)
    with torch.no_grad():
        return module(torch.from_numpy(x)).double().numpy()


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def cuda_server(request, ort_cuda: Target, gpu_repositories, tmp_path_factory):
    precision = request.param
    log = tmp_path_factory.mktemp(f"serve-{precision}") / "server.log"
    models = [arg for model in ort_cuda.models for arg in ("--model", model)]
    server = ServerProcess(gpu_repositories[precision], log, "--device", ort_cuda.device, *models)
    try:
        server.wait_ready(timeout=300)  # ResNet-50: seven batch sizes warmed up on the GPU
        yield precision, gpu_repositories[precision], server
    finally:
        server.stop()


@pytest.mark.gpu
def test_every_model_reports_cuda_in_list_models_metric_and_log(ort_cuda: Target, cuda_server):
    _, _, server = cuda_server
    models, provider = ort_cuda.models, ort_cuda.provider
    with ZooClient(server.target) as client:
        listed = {m.name: m for m in client.list_models().models}
    assert set(listed) == set(models)
    assert {m.execution_provider for m in listed.values()} == {provider}
    assert all(m.state == "READY" for m in listed.values())
    metrics = _metrics(server.metrics_port)
    providers = {
        labels["model"]: (labels["provider"], value)
        for labels, value in metrics["cnnzoo_model_execution_provider"]
    }
    assert providers == {model: (provider, 1.0) for model in models}
    log = server.log()
    binding = " with IO binding" if provider == CUDA else "\n"  # IO binding: on CUDA only
    for model in models:
        assert f"serving {model} version 1 on {provider}" in log
        assert f"{model}/1/model.onnx on {provider}{binding}" in log
    if provider == CUDA:  # NVML's figures, labelled by the GPU's uuid
        assert [labels["gpu_uuid"] for labels, _ in metrics["nv_gpu_memory_used_bytes"]]


@pytest.mark.gpu
@pytest.mark.parametrize("model", MODELS)
def test_answers_equal_onnxruntime_cuda_exactly_and_pytorch(ort_cuda: Target, cuda_server, model):
    import tritonclient.grpc as triton

    if model not in ort_cuda.models:
        pytest.skip(f"rehearsal on the CPU: {model} is left out")
    precision, repository, server = cuda_server
    x = _inputs(model)
    client = triton.InferenceServerClient(server.target)
    request = triton.InferInput("input", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    served = client.infer(model, [request]).as_numpy("logits")
    client.close()

    # the server's session, made here with the same settings (its intra-op threads: 1)
    options = RuntimeOptions(device=ort_cuda.device, intra_op_threads=1)
    local = OnnxModel(repository / model / "1" / "model.onnx", options)
    assert local.provider == ort_cuda.provider
    if not ort_cuda.rehearsal:
        assert local.io_binding
        assert local.session_options.get_session_config_entry(NO_CPU_FALLBACK) == "1"
    np.testing.assert_array_equal(served, local.run(x))

    reference = _pytorch_logits(repository, model, x)
    if precision == "fp32":
        np.testing.assert_allclose(served, reference, rtol=1e-3, atol=1e-3)
    else:
        ordered = np.sort(reference, axis=1)
        clear = (ordered[:, -1] - ordered[:, -2]) > FP16_MARGIN * np.abs(ordered[:, -1]).clip(1)
        assert clear.sum() >= ROWS // 2, "too few rows with a clear top-1 to compare"
        assert (served.argmax(1)[clear] == reference.argmax(1)[clear]).all()


def _cpu_only_graph(folder: Path) -> None:
    """A model whose Det node has no CUDA kernel: [N, 4] -> [N, 1] determinants."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1])
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 2, 2])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["square"]),
        helper.make_node("Det", ["square"], ["det"]),
        helper.make_node("Unsqueeze", ["det", "axes"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "determinant", [x], [y], [shape, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(
        'name: "determinant"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
    )


def test_a_graph_with_a_cpu_only_node_serves_on_the_cpu(tmp_path):
    """The model the GPU test below refuses is sound: on the CPU it loads and serves."""
    _cpu_only_graph(tmp_path / "repo" / "determinant")
    server = ServerProcess(tmp_path / "repo", tmp_path / "server.log", "--device", "cpu")
    try:
        server.wait_ready()
        with ZooClient(server.target) as client:
            (model,) = client.list_models().models
        assert model.state == "READY", model.reason
    finally:
        server.stop()


@pytest.mark.gpu
def test_a_node_on_the_cpu_is_an_error_not_a_slowdown(ort_cuda: Target, gpu_repositories, tmp_path):
    ort_cuda.only_on_a_gpu("a node refused on the CPU")
    repository = tmp_path / "repo"
    _cpu_only_graph(repository / "determinant")
    with pytest.raises(UnsupportedModel, match="on the CPU"):
        OnnxModel(repository / "determinant" / "1" / "model.onnx", RuntimeOptions(device="cuda"))
    # --device auto allows it (CUDA where it can, the CPU for Det)
    auto = OnnxModel(repository / "determinant" / "1" / "model.onnx", RuntimeOptions())
    x = np.array([[1, 2, 3, 4], [2, 0, 0, 2]], np.float32)
    np.testing.assert_allclose(auto.run(x), [[-2.0], [4.0]], rtol=1e-6)

    # served: the model is refused with the reason, the others serve on CUDA
    shutil.copytree(gpu_repositories["fp32"] / "lenet5-mnist", repository / "lenet5-mnist")
    server = ServerProcess(repository, tmp_path / "server.log", "--device", "cuda")
    try:
        server.wait_ready(timeout=120)
        with ZooClient(server.target) as client:
            listed = {m.name: m for m in client.list_models().models}
    finally:
        server.stop()
    assert listed["lenet5-mnist"].execution_provider == CUDA
    assert listed["determinant"].state == "UNAVAILABLE"
    assert "on the CPU" in listed["determinant"].reason


@pytest.mark.gpu
def test_no_visible_device_refuses_to_start_saying_why(ort_cuda: Target, gpu_repositories):
    ort_cuda.only_on_a_gpu("a device hidden by CUDA_VISIBLE_DEVICES")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = cnnzoo(
        "serve", "--repository", str(gpu_repositories["fp32"]), "--device", "cuda",
        "--port", "0", "--http-port", "-1", "--metrics-port", "-1", env=env,
    )  # fmt: skip
    assert result.returncode == 9, result.stderr  # ExecutionProviderError's exit code
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("cnnzoo serve: error: --device cuda: no CUDA device is visible")
    assert "CUDA_VISIBLE_DEVICES is ''" in line
