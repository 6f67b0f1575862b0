"""Serving benchmark: `cnnzoo serve` against a bare grpc.aio server and in-process ONNX Runtime.

Every figure has its reference measured in the same run, on the same machine, with the same load
generator: Triton's perf_analyzer (C++, so it costs the shared cores less than a Python client)
unless the row says otherwise. The bare server (bench/bare_server.py) wraps the very ONNX Runtime
session cnnzoo builds and nothing else: it is the floor for what serving over gRPC costs.

Parts (targets are for a 2-core CPU, where server and load generator share the cores):
  1. lenet5-mnist, batch-1 unary requests at concurrency 1, 4, 16: cnnzoo and the bare server
     (target at c4: cnnzoo >= 0.95x the bare server's req/s); also the grpc.aio Python client.
  2. lenet5-mnist, batch 1, concurrency 4: `--streaming` (target >= 2.0x the bare server's unary
     req/s; the bare server's own streaming shows how far grpc.aio goes) and the REST API with
     JSON and with binary tensors (`-i http`).
  3. resnet18-imagenet, 224 px, batch 8: in-process ONNX Runtime; gRPC with the tensor in the
     request; `--shared-memory system` (target >= 0.97x in-process); REST binary (target >= 0.8x
     gRPC); uint8 images (`--input-dtype uint8` export: 4x fewer bytes) against fp32.
  4. resnet18-imagenet, 32 concurrent batch-1 clients (grpc.aio): dynamic batching on vs off.
  5. (CUDA only) resnet50-imagenet fp16: img/s at batch 1, 8, 64 through gRPC vs in process.

Prints a markdown table and writes JSON named by its conditions to bench/results/.

    python bench/serving.py                          # exports what it needs into a temp repository
    python bench/serving.py --repository model_repository --seconds 10 --parts 1,2
    python bench/serving.py --perf-analyzer /opt/triton/bin/perf_analyzer  # default: .tools/bin
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import platform
import shutil
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
    """`cnnzoo export` into `repository` unless the model is there."""
    if (repository / model / "config.pbtxt").is_file():
        return
    print(f"exporting {model} into {repository} ...", file=sys.stderr, flush=True)
    subprocess.run(
        [sys.executable, "-m", "cnnzoo", "export", model, "--repository", str(repository), *extra],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip


@contextmanager
def process(args: list[str], ready: str = "serving on"):
    """A server subprocess; returns once it printed `ready`."""
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while True:
            log.seek(0)
            text = log.read()
            if ready in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{text}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


@contextmanager
def server(repository: Path, models: list[str], device: str, *extra: str):
    """`cnnzoo serve` in a subprocess; yields (gRPC host:port, REST host:port) once it is ready."""
    port, http_port = free_port(), free_port()
    args = [sys.executable, "-m", "cnnzoo", "serve", "--repository", str(repository),
            "--port", str(port), "--http-port", str(http_port), "--metrics-port", "-1",
            "--device", device, "--log-level", "WARNING", *extra]  # fmt: skip
    for model in models:
        args += ["--model", model]
    with process(args):
        yield f"127.0.0.1:{port}", f"127.0.0.1:{http_port}"


@contextmanager
def bare_server(repository: Path, model: str, device: str):
    """bench/bare_server.py on `model`; yields its host:port."""
    port = free_port()
    args = [sys.executable, str(ROOT / "bench" / "bare_server.py"), str(repository / model),
            "--port", str(port), "--device", device]  # fmt: skip
    with process(args):
        yield f"127.0.0.1:{port}"


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
    # failed measurements (NaN) sort first, so one failure in three rounds still gives a rate
    ordered = sorted(results, key=lambda r: (not math.isnan(r["img_per_s"]), r["img_per_s"]))
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
    """Closed-loop load: `concurrency` grpc.aio callers, each sending the next request when
    answered."""
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


class PerfAnalyzer:
    """Triton's perf_analyzer: one closed-loop measurement per call (its CSV report).

    Every request carries `sample` (one input, repeated `batch` times) instead of perf_analyzer's
    own random bytes, so the server computes on the very data the in-process reference does.
    """

    def __init__(self, binary: str, seconds: float, folder: Path) -> None:
        self.binary = binary
        self.interval_ms = int(seconds * 1000)
        self.folder = folder

    def __call__(self, url: str, model: str, sample: np.ndarray, batch: int, concurrency: int,
                 *flags: str) -> dict:  # fmt: skip
        data = self.folder / f"{model}-{sample.dtype}"
        data.mkdir(exist_ok=True)
        sample.astype(sample.dtype.newbyteorder("<")).tofile(data / "input")
        for stability in ("30", "100"):  # a loaded machine may never look stable at 30 %
            with tempfile.TemporaryDirectory() as folder:
                report = Path(folder) / "report.csv"
                result = subprocess.run(
                    [self.binary, "-m", model, "-u", url, "-b", str(batch),
                     "--input-data", str(data),
                     "--concurrency-range", f"{concurrency}:{concurrency}",
                     "--measurement-interval", str(self.interval_ms),
                     "--stability-percentage", stability, "--max-trials", "6",
                     "-f", str(report), *flags],
                    capture_output=True, text=True,
                )  # fmt: skip
                if result.returncode == 0 and report.is_file():
                    with open(report) as handle:
                        (line,) = list(csv.DictReader(handle))
                    break
        else:
            # A busy machine can keep perf_analyzer from ever calling a window stable: that
            # measurement is recorded as failed (NaN, with perf_analyzer's reason) and the
            # benchmark goes on; the median of a row's rounds skips it.
            said = (result.stderr.strip() or result.stdout.strip()).splitlines()
            reason = said[-1] if said else f"exit status {result.returncode}"
            print(f"  perf_analyzer gave no result for {model} b{batch} c{concurrency} "
                  f"{' '.join(flags)}: {reason}", file=sys.stderr, flush=True)  # fmt: skip
            nan = float("nan")
            return {"requests": None, "req_per_s": nan, "img_per_s": nan, "p50_ms": nan,
                    "p99_ms": nan, "error": reason}  # fmt: skip
        rate = float(line["Inferences/Second"])
        return {
            "requests": None,
            "req_per_s": rate / batch,
            "img_per_s": rate,
            "p50_ms": float(line["p50 latency"]) / 1000,
            "p99_ms": float(line["p99 latency"]) / 1000,
        }


def find_perf_analyzer(given: str | None) -> str:
    for candidate in (given, str(ROOT / ".tools" / "bin" / "perf_analyzer"), "perf_analyzer"):
        if candidate and shutil.which(candidate):
            return candidate
    raise SystemExit(
        "perf_analyzer not found: run scripts/install_perf_analyzer.sh or pass --perf-analyzer"
    )


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
        "load_generator": "perf_analyzer 2.51.0 (rows marked grpc.aio: a Python client), "
        "same machine",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="reuse/extend this repository")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time per row")
    parser.add_argument("--parts", default="1,2,3,4,5", help="which parts to run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the ratio rows")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--perf-analyzer", help="perf_analyzer binary (default: .tools/bin)")
    args = parser.parse_args(argv)
    parts = {int(p) for p in args.parts.split(",")}
    samples = tempfile.TemporaryDirectory(prefix="cnnzoo-bench-data-")
    pa = PerfAnalyzer(find_perf_analyzer(args.perf_analyzer), args.seconds, Path(samples.name))

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

    def row(part: str, model: str, batch: int, concurrency: int, path: str, r: dict,
            ratio: float | None = None, ratio_of: str = "", target: str = "") -> dict:  # fmt: skip
        # The machine's 1-minute load average when the row finished: other work on the same
        # cores (the client included) shows up here and explains noisy rows.
        entry = {"part": part, "model": model, "batch": batch, "concurrency": concurrency,
                 "path": path, **r, "ratio": ratio, "ratio_of": ratio_of, "target": target,
                 "load_1min": os.getloadavg()[0]}  # fmt: skip
        rows.append(entry)
        print(f"  {part} {model} b{batch} c{concurrency} {path}: {r['req_per_s']:.0f} req/s "
              f"{r['img_per_s']:.0f} img/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms"
              + (f" ratio {ratio:.2f} ({ratio_of})" if ratio is not None else ""),
              file=sys.stderr, flush=True)  # fmt: skip
        return entry

    def rounds(measure: dict) -> dict[str, dict]:
        """Each measurement `args.rounds` times, interleaved so that other load on the machine
        hits all of them alike; the median of each."""
        results: dict[str, list[dict]] = {key: [] for key in measure}
        for _ in range(args.rounds):
            for key, run in measure.items():
                results[key].append(run())
        return {key: median(values) for key, values in results.items()}

    bare_unary: dict[int, dict] = {}
    if parts & {1, 2}:
        export(repository, LENET)
        x = rng.standard_normal((1, 1, 32, 32)).astype(np.float32)
        with (
            server(repository, [LENET], device) as (target, _),
            bare_server(repository, LENET, device) as bare,
        ):
            for c in (1, 4, 16) if 1 in parts else (4,):
                measured = rounds(
                    {
                        "cnnzoo": lambda c=c: pa(target, LENET, x[0], 1, c, "-i", "grpc"),
                        "bare": lambda c=c: pa(bare, LENET, x[0], 1, c, "-i", "grpc"),
                    }
                )
                bare_unary[c] = row("1", LENET, 1, c, "grpc, bare server", measured["bare"])
                ours = measured["cnnzoo"]
                row("1", LENET, 1, c, "grpc", ours, ours["req_per_s"] / bare_unary[c]["req_per_s"],
                    "cnnzoo / bare", ">= 0.95" if c == 4 else "")  # fmt: skip
                if 1 in parts:
                    row("1", LENET, 1, c, "grpc (grpc.aio client)",
                        grpc_load(target, LENET, x, c, seconds, warmup))  # fmt: skip
        if 1 in parts:
            onnx = repository / LENET / "1" / "model.onnx"
            for c in (1, 4, 16):
                row("1", LENET, 1, c, "in-process", in_process_load(onnx, device, x, c, seconds,
                                                                    warmup))  # fmt: skip

    if 2 in parts:
        digit = rng.standard_normal((1, 32, 32)).astype(np.float32)
        with (
            server(repository, [LENET], device) as (target, rest),
            bare_server(repository, LENET, device) as bare,
        ):
            measured = rounds(
                {
                    "stream": lambda: pa(target, LENET, digit, 1, 4, "-i", "grpc", "--streaming"),
                    "bare stream": lambda: pa(
                        bare, LENET, digit, 1, 4, "-i", "grpc", "--streaming"
                    ),
                    "json": lambda: pa(
                        rest,
                        LENET,
                        digit,
                        1,
                        4,
                        "-i",
                        "http",
                        "--input-tensor-format",
                        "json",
                        "--output-tensor-format",
                        "json",
                    ),  # fmt: skip
                    "binary": lambda: pa(rest, LENET, digit, 1, 4, "-i", "http"),
                }
            )
        floor = bare_unary[4]["req_per_s"]
        stream = measured["stream"]
        row("2", LENET, 1, 4, "grpc --streaming", stream, stream["req_per_s"] / floor,
            "streaming / bare unary", ">= 2.0")  # fmt: skip
        bare_stream = measured["bare stream"]
        row("2", LENET, 1, 4, "grpc --streaming, bare server", bare_stream,
            bare_stream["req_per_s"] / floor, "bare streaming / bare unary")  # fmt: skip
        row("2", LENET, 1, 4, "REST, JSON tensors", measured["json"],
            measured["json"]["req_per_s"] / floor, "REST / bare unary gRPC")  # fmt: skip
        row("2", LENET, 1, 4, "REST, binary tensors", measured["binary"],
            measured["binary"]["req_per_s"] / floor, "REST / bare unary gRPC")  # fmt: skip

    if parts & {3, 4}:
        export(repository, RESNET18)
        onnx = repository / RESNET18 / "1" / "model.onnx"
        long = max(seconds, 8.0)  # resnet18 requests take 30-300 ms each on a small CPU
    if 3 in parts:
        repo_u8 = repository / "uint8"  # a model's versions share one config: another repository
        export(repo_u8, RESNET18, "--input-dtype", "uint8")
        image = rng.standard_normal((3, 224, 224)).astype(np.float32)
        pixels = rng.integers(0, 256, (3, 224, 224), dtype=np.uint8)
        x = np.repeat(image[None], 8, axis=0)  # what perf_analyzer sends: the image 8 times
        with (
            server(repository, [RESNET18], device) as (target, rest),
            server(repo_u8, [RESNET18], device) as (target_u8, _),
        ):
            measured = rounds(
                {
                    "local": lambda: in_process_load(onnx, device, x, 1, long, warmup),
                    "grpc": lambda: pa(target, RESNET18, image, 8, 1, "-i", "grpc"),
                    "shm": lambda: pa(
                        target, RESNET18, image, 8, 1, "-i", "grpc", "--shared-memory", "system"
                    ),  # fmt: skip
                    "rest": lambda: pa(rest, RESNET18, image, 8, 1, "-i", "http"),
                    "uint8": lambda: pa(target_u8, RESNET18, pixels, 8, 1, "-i", "grpc"),
                }
            )
        local = row("3", RESNET18, 8, 1, "in-process", measured["local"])
        grpc_row = measured["grpc"]
        row("3", RESNET18, 8, 1, "grpc, fp32 tensor in the request", grpc_row,
            grpc_row["img_per_s"] / local["img_per_s"], "gRPC / in-process")  # fmt: skip
        row("3", RESNET18, 8, 1, "grpc, --shared-memory system", measured["shm"],
            measured["shm"]["img_per_s"] / local["img_per_s"], "shared memory / in-process",
            ">= 0.97")  # fmt: skip
        row("3", RESNET18, 8, 1, "REST, binary tensors", measured["rest"],
            measured["rest"]["img_per_s"] / grpc_row["img_per_s"], "REST / gRPC",
            ">= 0.8")  # fmt: skip
        row("3", RESNET18, 8, 1, "grpc, uint8 pixels in the request", measured["uint8"],
            measured["uint8"]["img_per_s"] / grpc_row["img_per_s"], "uint8 / fp32")  # fmt: skip

    if 4 in parts:
        x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
        with server(repository, [RESNET18], device) as (target, _):
            on = grpc_load(target, RESNET18, x, 32, long, warmup * 3)
        with server(repository, [RESNET18], device, "--no-batching") as (target, _):
            off = row("4", RESNET18, 1, 32, "grpc.aio, batching off",
                      grpc_load(target, RESNET18, x, 32, long, warmup * 3))  # fmt: skip
        row("4", RESNET18, 1, 32, "grpc.aio, batching on", on,
            on["img_per_s"] / off["img_per_s"], "batching on / off")  # fmt: skip
        row("4", RESNET18, 1, 1, "in-process", in_process_load(onnx, device, x, 1, long, warmup))
        x32 = np.repeat(x, 32, axis=0)
        row("4", RESNET18, 32, 1, "in-process",
            in_process_load(onnx, device, x32, 1, long, warmup))  # fmt: skip

    if 5 in parts and device == "cuda":
        repo16 = repository / "fp16"
        export(repo16, RESNET50, "--fp16")
        onnx = repo16 / RESNET50 / "1" / "model.onnx"
        with server(repo16, [RESNET50], device) as (target, _):
            for batch in (1, 8, 64):
                x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
                local = row("5", f"{RESNET50} fp16", batch, 1, "in-process",
                            in_process_load(onnx, device, x, 1, seconds, warmup))  # fmt: skip
                ours = pa(target, RESNET50, x[0], batch, 2, "-i", "grpc", "--shared-memory",
                          "system")  # fmt: skip
                row("5", f"{RESNET50} fp16", batch, 2, "grpc, --shared-memory system", ours,
                    ours["img_per_s"] / local["img_per_s"], "gRPC / in-process")  # fmt: skip

    table = markdown(rows, info)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    name = (f"serving_{info['device']}-{info['cores']}cores_{info['provider']}_{info['precision']}"
            f"_ort{info['onnxruntime']}_grpc{info['grpcio']}.json")  # fmt: skip
    document = {"conditions": info, "seconds_per_row": seconds, "rounds": args.rounds,
                "rows": rows, "table": table}  # fmt: skip
    (args.out / name).write_text(json.dumps(without_nan(document), indent=2) + "\n")
    print(f"\nwrote {args.out / name}", file=sys.stderr)
    samples.cleanup()
    if temp is not None:
        temp.cleanup()
    return 0


def without_nan(value):
    """The document with failed measurements as null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item) for item in value]
    return value


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        f"Device: {info['device']} ({info['provider']}, {info['cores']} cores, {info['cpu']}), "
        f"onnxruntime {info['onnxruntime']}, grpcio {info['grpcio']}; "
        f"load: {info['load_generator']}",
        "",
        "| part | model | batch | concurrency | path | req/s | img/s | p50 ms | p99 ms | ratio "
        "| target | load |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f} ({r['ratio_of']})"
        lines.append(
            f"| {r['part']} | {r['model']} | {r['batch']} | {r['concurrency']} | {r['path']} | "
            f"{r['req_per_s']:.0f} | {r['img_per_s']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {ratio} | {r.get('target', '')} | {r['load_1min']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
