"""Serving benchmark: gRPC through `cnnzoo serve` against the in-process ONNX Runtime loop.

Parts (each with its in-process reference measured in the same run):
  1. lenet5-mnist, batch-1 requests at concurrency 1, 4, 16: req/s, p50, p99.
  2. resnet18-imagenet, 224px batch-8 requests: img/s through gRPC vs in process (target >= 0.9).
  3. resnet18-imagenet, 32 concurrent batch-1 clients: dynamic batching on vs off (target >= 1.5x).
  4. (CUDA only) resnet50-imagenet fp16: img/s at batch 1, 8, 64 through gRPC vs in process.

The load generator is an asyncio gRPC client (grpc.aio) in this process; the server runs in a
subprocess. With `--perf-analyzer PATH` part 1 is also measured with NVIDIA's perf_analyzer (a
C++ client that costs the shared cores less). Prints a markdown table and writes JSON named by
its conditions to bench/results/.

    python bench/serving.py                       # exports what it needs into a temp repository
    python bench/serving.py --repository model_repository --seconds 10
    python bench/serving.py --parts 1 --perf-analyzer /opt/pa/perf_analyzer \
        --perf-analyzer-libs /opt/pa/lib          # LD_LIBRARY_PATH for libb64 / libcudart.so.12
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LENET, RESNET18, RESNET50 = "lenet5-mnist", "resnet18-imagenet", "resnet50-imagenet"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def export(repository: Path, model: str, *extra: str) -> None:
    if (repository / model / "config.pbtxt").is_file():
        return
    print(f"exporting {model} into {repository} ...", file=sys.stderr, flush=True)
    subprocess.run(
        [sys.executable, "-m", "cnnzoo", "export", model, "--repository", str(repository), *extra],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip


@contextmanager
def server(repository: Path, models: list[str], device: str, *extra: str):
    """`cnnzoo serve` in a subprocess; yields its host:port once the models are loaded."""
    port = free_port()
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in the finally below
    args = [sys.executable, "-m", "cnnzoo", "serve", "--repository", str(repository),
            "--port", str(port), "--metrics-port", "-1", "--device", device,
            "--log-level", "WARNING", *extra]  # fmt: skip
    for model in models:
        args += ["--model", model]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            log.seek(0)
            text = log.read()
            if "serving on" in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{text}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def summarise(latencies: list[float], seconds: float, rows_per_request: int) -> dict:
    lat = np.asarray(latencies) * 1e3
    return {
        "requests": len(latencies),
        "req_per_s": len(latencies) / seconds,
        "img_per_s": len(latencies) * rows_per_request / seconds,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
    }


def median(results: list[dict]) -> dict:
    """The run with the median throughput (its latencies come with it)."""
    ordered = sorted(results, key=lambda r: r["img_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rounds_img_per_s"] = [r["img_per_s"] for r in results]
    return chosen


def infer_request(model: str, x: np.ndarray):
    from cnnzoo.protos import grpc_service_pb2

    request = grpc_service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request


def grpc_load(target: str, model: str, x: np.ndarray, concurrency: int, seconds: float,
              warmup: float) -> dict:  # fmt: skip
    """Closed-loop load: `concurrency` callers, each sending the next request when answered."""
    import grpc

    from cnnzoo.protos import grpc_service_pb2_grpc

    request = infer_request(model, x)

    async def run() -> dict:
        limit = 256 * 1024 * 1024
        options = [("grpc.max_send_message_length", limit),
                   ("grpc.max_receive_message_length", limit)]  # fmt: skip
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(request)
            latencies: list[float] = []
            errors = 0
            start = time.perf_counter()
            measure_from, stop_at = start + warmup, start + warmup + seconds

            async def caller() -> None:
                nonlocal errors
                while True:
                    t0 = time.perf_counter()
                    if t0 >= stop_at:
                        return
                    try:
                        await stub.ModelInfer(request)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    if t0 >= measure_from:
                        latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*(caller() for _ in range(concurrency)))
            result = summarise(latencies, seconds, len(x))
            result["errors"] = errors
            return result

    return asyncio.run(run())


def in_process_load(model_path: Path, device: str, x: np.ndarray, concurrency: int,
                    seconds: float, warmup: float) -> dict:  # fmt: skip
    """The same closed loop calling an ONNX Runtime session directly from `concurrency` threads."""
    from cnnzoo.serving.runtime import OnnxModel, RuntimeOptions

    session = OnnxModel(model_path, RuntimeOptions(device=device))
    session.run(x)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    def caller(out: list[float]) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            session.run(x)
            if t0 >= measure_from:
                out.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=caller, args=(out,)) for out in latencies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summarise([t for out in latencies for t in out], seconds, len(x))


def perf_analyzer_load(binary: str, libs: str, target: str, model: str, concurrency: int,
                       seconds: float) -> dict:  # fmt: skip
    """perf_analyzer's closed loop at one concurrency (its CSV report, latencies in usec)."""
    import csv

    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.csv"
        env = dict(os.environ)
        if libs:
            env["LD_LIBRARY_PATH"] = libs + os.pathsep + env.get("LD_LIBRARY_PATH", "")
        subprocess.run(
            [binary, "-m", model, "-i", "grpc", "-u", target, "-b", "1",
             "--concurrency-range", f"{concurrency}:{concurrency}",
             "--measurement-interval", str(int(seconds * 1000)),
             "--stability-percentage", "30", "--max-trials", "8", "-f", str(report)],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with open(report) as handle:
            (line,) = list(csv.DictReader(handle))
    rate = float(line["Inferences/Second"])
    return {
        "requests": None,
        "req_per_s": rate,
        "img_per_s": rate,
        "p50_ms": float(line["p50 latency"]) / 1000,
        "p99_ms": float(line["p99 latency"]) / 1000,
    }


def conditions(device: str) -> dict:
    import grpc
    import onnxruntime as ort

    from cnnzoo.serving.runtime import CPU, CUDA, available_cores, cuda_unavailable_reason

    provider = CPU if device == "cpu" or cuda_unavailable_reason() else CUDA
    return {
        "device": "cuda" if provider == CUDA else "cpu",
        "provider": provider,
        "precision": "fp32",
        "cores": available_cores(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "grpcio": grpc.__version__,
        "load_generator": "grpc.aio closed loop, same machine",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="reuse/extend this repository")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time per row")
    parser.add_argument("--parts", default="1,2,3,4", help="which parts to run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--perf-analyzer", help="perf_analyzer binary (part 1, optional)")
    parser.add_argument("--perf-analyzer-libs", default="", help="its LD_LIBRARY_PATH")
    args = parser.parse_args(argv)
    parts = {int(p) for p in args.parts.split(",")}

    temp = None
    repository = args.repository
    if repository is None:
        temp = tempfile.TemporaryDirectory(prefix="cnnzoo-bench-")
        repository = Path(temp.name)
    repository.mkdir(parents=True, exist_ok=True)
    info = conditions(args.device)
    device = info["device"]
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    seconds, warmup = args.seconds, args.warmup

    def row(part: str, model: str, batch: int, concurrency: int, path: str, r: dict) -> dict:
        # The machine's 1-minute load average when the row finished: other work on the same
        # cores (the client included) shows up here and explains noisy rows.
        entry = {"part": part, "model": model, "batch": batch, "concurrency": concurrency,
                 "path": path, **r, "load_1min": os.getloadavg()[0]}  # fmt: skip
        rows.append(entry)
        print(f"  {part} {model} b{batch} c{concurrency} {path}: {r['req_per_s']:.0f} req/s "
              f"{r['img_per_s']:.0f} img/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms",
              file=sys.stderr, flush=True)  # fmt: skip
        return entry

    if 1 in parts:
        export(repository, LENET)
        x = rng.standard_normal((1, 1, 32, 32)).astype(np.float32)
        onnx = repository / LENET / "1" / "model.onnx"
        with server(repository, [LENET], device) as target:
            for c in (1, 4, 16):
                row("1", LENET, 1, c, "grpc", grpc_load(target, LENET, x, c, seconds, warmup))
                if args.perf_analyzer:
                    pa = perf_analyzer_load(
                        args.perf_analyzer, args.perf_analyzer_libs, target, LENET, c, seconds
                    )
                    row("1", LENET, 1, c, "grpc (perf_analyzer)", pa)
        for c in (1, 4, 16):
            local = in_process_load(onnx, device, x, c, seconds, warmup)
            row("1", LENET, 1, c, "in-process", local)

    if parts & {2, 3}:
        export(repository, RESNET18)
        onnx = repository / RESNET18 / "1" / "model.onnx"
        long = max(seconds, 8.0)  # resnet18 requests take 30-300 ms each on a small CPU
        if 2 in parts:
            # Rounds alternate gRPC and in-process so that other load on the machine hits both.
            x = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
            rounds: dict[str, list[dict]] = {"grpc c1": [], "grpc c2": [], "local": []}
            with server(repository, [RESNET18], device) as target:
                for _ in range(3):
                    rounds["grpc c1"].append(grpc_load(target, RESNET18, x, 1, seconds, warmup))
                    rounds["grpc c2"].append(grpc_load(target, RESNET18, x, 2, seconds, warmup))
                    rounds["local"].append(in_process_load(onnx, device, x, 1, seconds, warmup))
            local = row("2", RESNET18, 8, 1, "in-process", median(rounds["local"]))
            for key, concurrency in (("grpc c1", 1), ("grpc c2", 2)):
                g = row("2", RESNET18, 8, concurrency, "grpc", median(rounds[key]))
                g["ratio_vs_in_process"] = g["img_per_s"] / local["img_per_s"]
        if 3 in parts:
            x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
            with server(repository, [RESNET18], device) as target:
                on = row("3", RESNET18, 1, 32, "grpc batching on",
                         grpc_load(target, RESNET18, x, 32, long, warmup * 3))  # fmt: skip
            with server(repository, [RESNET18], device, "--no-batching") as target:
                off = row("3", RESNET18, 1, 32, "grpc batching off",
                          grpc_load(target, RESNET18, x, 32, long, warmup * 3))  # fmt: skip
            single = in_process_load(onnx, device, x, 1, long, warmup)
            row("3", RESNET18, 1, 1, "in-process", single)
            x32 = np.repeat(x, 32, axis=0)
            row(
                "3",
                RESNET18,
                32,
                1,
                "in-process",
                in_process_load(onnx, device, x32, 1, long, warmup),
            )
            on["ratio_on_vs_off"] = on["img_per_s"] / off["img_per_s"]

    if 4 in parts and device == "cuda":
        repo16 = repository / "fp16"
        export(repo16, RESNET50, "--fp16")
        onnx = repo16 / RESNET50 / "1" / "model.onnx"
        with server(repo16, [RESNET50], device) as target:
            for batch in (1, 8, 64):
                x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
                row("4", f"{RESNET50} fp16", batch, 2, "grpc",
                    grpc_load(target, RESNET50, x, 2, seconds, warmup))  # fmt: skip
                row("4", f"{RESNET50} fp16", batch, 1, "in-process",
                    in_process_load(onnx, device, x, 1, seconds, warmup))  # fmt: skip

    table = markdown(rows, info)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    name = (f"serving_{info['device']}-{info['cores']}cores_{info['provider']}_{info['precision']}"
            f"_ort{info['onnxruntime']}_grpc{info['grpcio']}.json")  # fmt: skip
    document = {"conditions": info, "seconds_per_row": seconds, "rows": rows, "table": table}
    (args.out / name).write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out / name}", file=sys.stderr)
    if temp is not None:
        temp.cleanup()
    return 0


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        f"Device: {info['device']} ({info['provider']}, {info['cores']} cores, {info['cpu']}), "
        f"onnxruntime {info['onnxruntime']}, grpcio {info['grpcio']}; "
        f"load: {info['load_generator']}",
        "",
        "| part | model | batch | concurrency | path | req/s | img/s | p50 ms | p99 ms | ratio "
        "| load |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r.get("ratio_vs_in_process", r.get("ratio_on_vs_off"))
        lines.append(
            f"| {r['part']} | {r['model']} | {r['batch']} | {r['concurrency']} | {r['path']} | "
            f"{r['req_per_s']:.0f} | {r['img_per_s']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {'' if ratio is None else f'{ratio:.2f}'} | "
            f"{r['load_1min']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
