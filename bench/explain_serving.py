"""Explanations served from the exported graphs, against the ways to get the same map without them.

For resnet20-cifar10 (the shipped weights, 32 px) and resnet18-imagenet (random weights, 224 px),
guided backprop and Grad-CAM, images per second of:

- **server**: gRPC Explain through `cnnzoo serve` (the explanation graph on ONNX Runtime, batched
  by the dynamic batcher), from `c` client threads at once, c = 1, 4, 16: PNG in, the map as a
  PNG out;
- **ModelInfer**: tritonclient's gRPC `infer` on the explanation model `MODEL.METHOD` through the
  same server (the preprocessed image as FP32, target and layer -1; the map, logits and target
  as tensors), one image per call, from `c` client threads, each on its own connection;
- **(a) PyTorch path**: what the Explain RPC did before the graphs, `cnnzoo.interpret.explain`
  in PyTorch one image at a time on one thread (it ran on a one-thread pool whatever the load);
- **(b) Captum**: Captum's `GuidedBackprop` / `LayerGradCam` called directly, one image at a
  time (PyTorch's default threads);
- **(c) in-process ONNX Runtime**: the same explanation graph in this process, `c` images per
  run (what the server's batches can at best be).

Targets at c = 16 on the CPU: server >= 3x (a) and >= 0.8x (c). Prints a markdown table and
writes bench/results/explain_serving_<device>-<cores>cores.json.

    .venv/bin/python bench/explain_serving.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

MODELS = {"resnet20-cifar10": "default", "resnet18-imagenet": None}  # None: random weights
METHODS = ("guided-backprop", "grad-cam")
CONCURRENCY = (1, 4, 16)


def _images(model: str, count: int) -> list[bytes]:
    from PIL import Image

    if model == "resnet20-cifar10":
        files = sorted((ROOT / "examples" / "cifar10").glob("*/*.png"))
        return [files[i % len(files)].read_bytes() for i in range(count)]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(repository: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnzoo", "serve", "--repository", str(repository),
         "--port", str(port), "--http-port", "-1", "--metrics-port", "-1"],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                channel.close()
                return process, port
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not become ready; see {log}")


def server_rate(port: int, model: str, method: str, images: list[bytes], c: int) -> float:
    """Explain calls per second from `c` threads, each with its own channel."""
    import grpc

    from cnnzoo.protos import zoo_pb2, zoo_pb2_grpc

    def worker(share: list[bytes]) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = zoo_pb2_grpc.ZooStub(channel)
            for image in share:
                stub.Explain(zoo_pb2.ExplainRequest(model=model, image=image, method=method),
                             timeout=600)  # fmt: skip

    warm = zoo_pb2.ExplainRequest(model=model, image=images[0], method=method)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        zoo_pb2_grpc.ZooStub(channel).Explain(warm, timeout=600)  # builds nothing timed
    shares = [images[i::c] for i in range(c)]
    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(images) / (time.perf_counter() - started)


def infer_rate(port: int, model: str, method: str, x: np.ndarray, c: int) -> float:
    """ModelInfer on `MODEL.METHOD`, one image per call, from `c` threads (own connections)."""
    import tritonclient.grpc as triton

    name = f"{model}.{method}"

    def requests(client) -> list:  # noqa: ANN001 - a tritonclient client
        metadata = client.get_model_metadata(name, as_json=True)
        made = []
        for i in range(len(x)):
            inputs = []
            for spec in metadata["inputs"]:
                shape = [1, *map(int, spec["shape"][1:])]
                value = x[i : i + 1] if spec["datatype"] == "FP32" else np.full(shape, -1, np.int64)
                tensor = triton.InferInput(spec["name"], shape, spec["datatype"])
                tensor.set_data_from_numpy(value)
                inputs.append(tensor)
            made.append(inputs)
        return made

    def worker(indices: range, ready: threading.Barrier) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        with triton.InferenceServerClient(f"127.0.0.1:{port}", channel_args=options) as client:
            prepared = requests(client)
            ready.wait()
            for i in indices:
                client.infer(name, prepared[i], client_timeout=600)

    with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        client.infer(name, requests(client)[0], client_timeout=600)  # made before timing
    ready = threading.Barrier(c + 1)
    threads = [threading.Thread(target=worker, args=(range(i, len(x), c), ready))
               for i in range(c)]  # fmt: skip
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return len(x) / (time.perf_counter() - started)


def _batch(model: str, images: list[bytes]) -> np.ndarray:
    from PIL import Image

    from cnnzoo import zoo

    preprocess = zoo.get_entry(model).preprocess
    return np.stack([preprocess.apply(Image.open(io.BytesIO(b))) for b in images])


def pytorch_rate(model: str, method: str, x: np.ndarray) -> float:
    """(a): `cnnzoo.interpret.explain` one image at a time on one thread."""
    import torch

    from cnnzoo import zoo
    from cnnzoo.interpret.explain import explain

    net = zoo.build_model(model, weights=MODELS[model])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        explain(net, torch.from_numpy(x[:1]), method)
        started = time.perf_counter()
        for i in range(len(x)):
            explain(net, torch.from_numpy(x[i : i + 1]), method)
        return len(x) / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def captum_rate(model: str, method: str, x: np.ndarray) -> float:
    """(b): Captum's attribution called directly, one image at a time."""
    import torch
    from captum.attr import GuidedBackprop, LayerGradCam

    from cnnzoo import zoo
    from cnnzoo.interpret.gradcam import cam_layer
    from cnnzoo.interpret.modules import get_layer

    net = zoo.build_model(model, weights=MODELS[model]).eval()
    if method == "guided-backprop":
        attribution = GuidedBackprop(net)
    else:
        layer = get_layer(net, cam_layer(net, torch.from_numpy(x[:1])))
        attribution = LayerGradCam(net, layer)

    def one(image: torch.Tensor) -> None:
        target = int(net(image).argmax())
        attribution.attribute(image.requires_grad_(), target=target)

    one(torch.from_numpy(x[:1]))
    started = time.perf_counter()
    for i in range(len(x)):
        one(torch.from_numpy(x[i : i + 1]))
    return len(x) / (time.perf_counter() - started)


def ort_rate(graph_path: Path, x: np.ndarray, c: int) -> float:
    """(c): the explanation graph in this process, `c` images per run."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}

    def run(batch: np.ndarray) -> None:
        feeds = {"input": batch, "target": np.full((len(batch), 1), -1, np.int64)}
        if "layer" in inputs:
            feeds["layer"] = np.full((len(batch), 1), -1, np.int64)
        session.run(None, feeds)

    run(x[:c])
    started = time.perf_counter()
    for i in range(0, len(x), c):
        run(x[i : i + c])
    return len(x) / (time.perf_counter() - started)


def bench(quick: bool) -> dict[str, Any]:
    from cnnzoo.cli import main as cnnzoo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"
        for model in MODELS:  # the shipped weights, or a random initialisation where none ship
            assert cnnzoo(["export", model, "--repository", str(repository),
                           "--explanations", ",".join(METHODS)]) == 0  # fmt: skip
        process, port = _server(repository, Path(tmp) / "server.log")
        try:
            for model in MODELS:
                count = (32 if quick else 96) if model == "resnet18-imagenet" else 256
                images = _images(model, count)
                x = _batch(model, images)
                for method in METHODS:
                    graph = repository / f"{model}.{method}" / "1" / "model.onnx"
                    reference_a = pytorch_rate(model, method, x[: max(8, count // 8)])
                    reference_b = captum_rate(model, method, x[: max(8, count // 8)])
                    for c in CONCURRENCY:
                        served = server_rate(port, model, method, images, c)
                        infer = infer_rate(port, model, method, x, c)
                        in_process = ort_rate(graph, x, c)
                        rows.append({
                            "model": model, "method": method, "concurrency": c,
                            "server_img_per_s": served, "model_infer_img_per_s": infer,
                            "model_infer_vs_ort_in_process": infer / in_process,
                            "pytorch_path_img_per_s": reference_a,
                            "captum_img_per_s": reference_b, "ort_in_process_img_per_s": in_process,
                            "vs_pytorch_path": served / reference_a,
                            "vs_ort_in_process": served / in_process, "images": count,
                        })  # fmt: skip
                        print(_line(rows[-1]), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return {
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "quick": quick,
        "targets": {"vs_pytorch_path_at_c16": ">= 3", "vs_ort_in_process_at_c16": ">= 0.8"},
        "rows": rows,
    }


HEADER = (
    "| model | method | c | server img/s | ModelInfer img/s | (a) PyTorch path | (b) Captum "
    "| (c) ORT in process | server / (a) | server / (c) | ModelInfer / (c) |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _line(row: dict[str, Any]) -> str:
    return (
        f"| {row['model']} | {row['method']} | {row['concurrency']} "
        f"| {row['server_img_per_s']:.1f} | {row['model_infer_img_per_s']:.1f} "
        f"| {row['pytorch_path_img_per_s']:.1f} "
        f"| {row['captum_img_per_s']:.1f} | {row['ort_in_process_img_per_s']:.1f} "
        f"| {row['vs_pytorch_path']:.2f} | {row['vs_ort_in_process']:.2f} "
        f"| {row['model_infer_vs_ort_in_process']:.2f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer 224 px images")
    args = parser.parse_args()
    print(HEADER, flush=True)
    results = bench(args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"explain_serving_cpu-{os.cpu_count()}cores.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
