"""GPU serving benchmark: `cnnzoo serve --device cuda` against in-process ONNX Runtime CUDA.

Every ratio's reference is measured in the same run on the same GPU: the in-process rows run
the very session the server builds (`OnnxModel`: the CUDA provider with the server's settings
and IO binding), in a closed loop of the same concurrency as the gRPC rows.

Parts:
  1. resnet50-imagenet fp16 and fp32 at batch 1, 8 and 64: img/s, p50 and p99 through gRPC with
     the tensor in the request and with `--shared-memory system` (perf_analyzer), against in
     process (target at batch 64: >= 0.8x in-process).
  2. resnet50-imagenet fp16, 64 concurrent batch-1 clients (perf_analyzer): dynamic batching on
     vs `--no-batching` (target: >= 4x).
  3. Explain images/s (gradient and guided backprop, 4 concurrent clients) against the same
     explanation computed in process with PyTorch on the GPU.

Prints a markdown table and writes JSON named by its conditions to bench/results/gpu/ (the file
name carries the GPU, the precision set and the versions).

    python bench/gpu.py --repository REPO      # REPO/fp32 and REPO/fp16 (tests/gpu/repository.py)
    python bench/gpu.py                        # exports what it needs into a temp folder first
    python bench/gpu.py --rehearse             # on the CPU: lenet5-mnist, short rows, every path
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import (  # noqa: E402 - after the path insert
    PerfAnalyzer,
    find_perf_analyzer,
    in_process_load,
    markdown,
    server,
    summarise,
    without_nan,
)

RESNET50, LENET = "resnet50-imagenet", "lenet5-mnist"
BATCHES = (1, 8, 64)
TARGET_GRPC = 0.8  # at batch 64, of in-process img/s
TARGET_BATCHING = 4.0  # 64 batch-1 clients, batching on / off
EXPLAIN_METHODS = ("gradient", "guided-backprop")


def conditions(device: str) -> dict:
    import grpc
    import onnxruntime as ort
    import torch

    from cnnzoo.serving.runtime import CPU, CUDA, available_cores

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    return {
        "device": device,
        "gpu": gpu,
        "provider": CUDA if device == "cuda" else CPU,
        "cores": available_cores(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "grpcio": grpc.__version__,
        "load_generator": "perf_analyzer 2.51.0 (Explain rows: grpc clients in threads), "
        "same machine",
    }


def explain_load(target: str, model: str, image: bytes, method: str, concurrency: int,
                 seconds: float) -> dict:  # fmt: skip
    """Explain calls from `concurrency` threads for `seconds`: images/s and latencies."""
    from cnnzoo.serving.client import ZooClient

    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def caller() -> None:
        with ZooClient(target, timeout=120) as client:
            client.explain(image, model, method)  # warm: loads the PyTorch model once
            while (started := time.perf_counter()) < stop_at:
                client.explain(image, model, method)
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summarise(latencies, max(time.perf_counter() - began, 1e-9), 1)


def explain_in_process(repository: Path, model: str, image: bytes, method: str, device: str,
                       seconds: float) -> dict:  # fmt: skip
    """The same explanation computed here with PyTorch on `device`, one after another."""
    import torch

    from cnnzoo.interpret.explain import explain
    from cnnzoo.zoo.images import decode_image
    from cnnzoo.zoo.preprocess import Preprocess
    from cnnzoo.zoo.repository import ModelRepository

    repo = ModelRepository(repository)
    module = repo.torch_model(model, 1).to(device)
    preprocess = Preprocess.from_parameters(repo.parameters(model))
    x = torch.from_numpy(preprocess.apply(decode_image(image))[None]).to(device)
    explain(module, x, method, None)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    while (started := time.perf_counter()) < stop_at:
        explain(module, x, method, None)
        if device == "cuda":
            torch.cuda.synchronize()
        latencies.append(time.perf_counter() - started)
    return summarise(latencies, seconds, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="folder with fp32/ and fp16/ repositories")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per row")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured time per row")
    parser.add_argument("--parts", default="1,2,3", help="which parts to run")
    parser.add_argument(
        "--batches", default=",".join(map(str, BATCHES)), help="part 1's batch sizes"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    parser.add_argument("--perf-analyzer", help="perf_analyzer binary (default: .tools/bin)")
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="run every path on the CPU with lenet5-mnist and short rows (no GPU needed)",
    )
    args = parser.parse_args(argv)
    parts = {int(p) for p in args.parts.split(",")}
    batches = [int(b) for b in args.batches.split(",")]
    device = "cpu" if args.rehearse else "cuda"
    if not args.rehearse:
        from cnnzoo.serving.runtime import cuda_unavailable_reason

        reason = cuda_unavailable_reason()
        if reason is not None:
            raise SystemExit(f"bench/gpu.py needs CUDA ({reason}); --rehearse runs it on the CPU")
    model = LENET if args.rehearse else RESNET50
    seconds, warmup = args.seconds, args.warmup
    samples = tempfile.TemporaryDirectory(prefix="cnnzoo-bench-gpu-data-")
    pa = PerfAnalyzer(find_perf_analyzer(args.perf_analyzer), seconds, Path(samples.name))

    temp = None
    root = args.repository
    if root is None:
        from tests.gpu.repository import build

        temp = tempfile.TemporaryDirectory(prefix="cnnzoo-bench-gpu-")
        root = Path(temp.name)
        build(root, (model,) if args.rehearse else (RESNET50, "resnet20-cifar10"))
    info = conditions(device)
    rng = np.random.default_rng(0)
    shape = (1, 32, 32) if model == LENET else (3, 224, 224)
    rows: list[dict] = []

    def row(part: str, name: str, batch: int, concurrency: int, path: str, r: dict,
            ratio: float | None = None, ratio_of: str = "", target: str = "") -> dict:  # fmt: skip
        entry = {"part": part, "model": name, "batch": batch, "concurrency": concurrency,
                 "path": path, **r, "ratio": ratio, "ratio_of": ratio_of, "target": target,
                 "load_1min": os.getloadavg()[0]}  # fmt: skip
        rows.append(entry)
        print(f"  {part} {name} b{batch} c{concurrency} {path}: {r['img_per_s']:.0f} img/s "
              f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms"
              + (f" ratio {ratio:.2f} ({ratio_of})" if ratio is not None else ""),
              file=sys.stderr, flush=True)  # fmt: skip
        return entry

    if 1 in parts:
        image = rng.standard_normal(shape).astype(np.float32)
        for precision in ("fp16", "fp32"):
            repository = root / precision
            onnx = repository / model / "1" / "model.onnx"
            name = f"{model} {precision}"
            with server(repository, [model], device) as (target, _):
                for batch in batches:
                    x = np.repeat(image[None], batch, axis=0)  # what perf_analyzer sends
                    local = row("1", name, batch, 1, "in-process (IO binding)",
                                in_process_load(onnx, device, x, 1, seconds, warmup))  # fmt: skip
                    goal = f">= {TARGET_GRPC}" if batch == 64 else ""
                    for path, flags in (
                        ("grpc, tensor in the request", ()),
                        ("grpc, --shared-memory system", ("--shared-memory", "system")),
                    ):
                        measured = pa(target, model, image, batch, 1, "-i", "grpc", *flags)
                        row("1", name, batch, 1, path, measured,
                            measured["img_per_s"] / local["img_per_s"], "gRPC / in-process",
                            goal)  # fmt: skip

    if 2 in parts:
        repository = root / "fp16"
        image = rng.standard_normal(shape).astype(np.float32)
        name = f"{model} fp16"
        with server(repository, [model], device, "--no-batching") as (target, _):
            off = row("2", name, 1, 64, "grpc, batching off",
                      pa(target, model, image, 1, 64, "-i", "grpc"))  # fmt: skip
        with server(repository, [model], device) as (target, _):
            on = pa(target, model, image, 1, 64, "-i", "grpc")
        row("2", name, 1, 64, "grpc, dynamic batching", on, on["img_per_s"] / off["img_per_s"],
            "batching on / off", f">= {TARGET_BATCHING}")  # fmt: skip

    if 3 in parts:
        repository = root / "fp32"
        if model == LENET:
            image_file = sorted((ROOT / "examples" / "digits").glob("*/*.png"))[0]
        else:
            from PIL import Image

            pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            image_file = Path(samples.name) / "random.png"
            Image.fromarray(pixels).save(image_file)
        image = image_file.read_bytes()
        with server(repository, [model], device) as (target, _):
            for method in EXPLAIN_METHODS:
                local = row("3", f"{model} fp32", 1, 1, f"Explain {method}, PyTorch in process",
                            explain_in_process(repository, model, image, method, device,
                                               seconds))  # fmt: skip
                served = explain_load(target, model, image, method, 4, seconds)
                ratio = served["img_per_s"] / local["img_per_s"]
                row("3", f"{model} fp32", 1, 4, f"Explain {method}, gRPC", served, ratio,
                    "Explain RPC / in process")  # fmt: skip

    table = markdown(rows, {**info, "cpu": info["gpu"] or info["cpu"]})
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = (info["gpu"] or "cpu").replace(" ", "-")
    name = (f"gpu-serving_{gpu}_{info['provider']}_ort{info['onnxruntime']}"
            f"_torch{info['torch']}{'_rehearsal' if args.rehearse else ''}.json")  # fmt: skip
    document = {"conditions": info, "model": model, "seconds_per_row": seconds, "rows": rows,
                "table": table, "rehearsal": args.rehearse}  # fmt: skip
    (args.out / name).write_text(json.dumps(without_nan(document), indent=2) + "\n")
    print(f"\nwrote {args.out / name}", file=sys.stderr)
    samples.cleanup()
    if temp is not None:
        temp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
