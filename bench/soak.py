"""Bounded soak: 10,000 checked requests at concurrency 64 while faults are injected.

`cnnzoo serve --poll-seconds 0.2` serves lenet5-mnist version 1 from a fresh repository; 64
asyncio gRPC callers send ModelInfer (nine in ten) and Classify (one in ten) requests, and every
answer is compared with what the version it names must give (ONNX Runtime in this process for
ModelInfer, the label of the shipped digit for Classify). Faults, in order:

1. hot reload: after 30 % of the requests, version 2 (other weights) is renamed into the
   repository, as `cnnzoo export` does; callers must see version 1 answers, then version 2 ones;
2. a corrupt version: after 60 %, version 3 with one flipped byte in model.onnx is renamed in; it
   must be refused (sha256) while version 2 serves on;
3. SIGTERM at the end: the last 64 requests are Classify calls of 60 digits each (decoding
   keeps them in the server for a while); 50 ms after the last one was sent, so that the server
   has received it, the server gets SIGTERM with them in flight; every one must be answered,
   and the server must exit 0.

A request is lost when it got no answer, an error, or a wrong one. Reports the counts, the
server's resident memory (VmRSS) after warm-up and before SIGTERM, and its peak (VmHWM); prints
a markdown table and writes JSON to bench/results/.

    python bench/soak.py [--requests 10000] [--concurrency 64] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import free_port, infer_request  # noqa: E402

MODEL = "lenet5-mnist"
EPOCH_1 = ROOT / "zoo" / "weights" / MODEL / "epochs" / "epoch_001.safetensors"
DIGIT = sorted((ROOT / "examples" / "digits" / "7").glob("*.png"))[0]


def cnnzoo(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "cnnzoo", *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL
    )


def build(work: Path) -> tuple[Path, Path]:
    """The served repository (version 1) and a staging one holding versions 2 and 3 (corrupt)."""
    served, staging = work / "repository", work / "staging"
    print("exporting versions 1-3 ...", file=sys.stderr, flush=True)
    cnnzoo("export", MODEL, "--repository", str(served))
    shutil.copytree(served, staging)
    cnnzoo(
        "export", MODEL, "--repository", str(staging), "--version", "2", "--weights", str(EPOCH_1)
    )
    cnnzoo("export", MODEL, "--repository", str(staging), "--version", "3")
    onnx_file = staging / MODEL / "3" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    return served, staging


def reference_logits(repository: Path, version: int, x: np.ndarray) -> bytes:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(repository / MODEL / str(version) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(["logits"], {"input": x})[0].astype("<f4").tobytes()


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


async def soak(
    target: str,
    proc: subprocess.Popen,
    served: Path,
    staging: Path,
    requests: int,
    concurrency: int,
) -> dict:
    import grpc

    from cnnzoo.protos import grpc_service_pb2_grpc, zoo_pb2, zoo_pb2_grpc

    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    expected = {"1": reference_logits(served, 1, x), "2": reference_logits(staging, 2, x)}
    infer = infer_request(MODEL, x)
    classify = zoo_pb2.ClassifyRequest(model=MODEL, images=[DIGIT.read_bytes()], top_k=1)
    tail = zoo_pb2.ClassifyRequest(model=MODEL, images=[DIGIT.read_bytes()] * 60, top_k=1)
    outcomes: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    sent = 0
    faults: list[dict] = []
    all_sent = asyncio.Event()
    in_flight = 0

    async with grpc.aio.insecure_channel(target) as channel:
        inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        zoo = zoo_pb2_grpc.ZooStub(channel)

        def inject(at: float, what: str, version: int) -> None:
            shutil.move(staging / MODEL / str(version), served / MODEL / str(version))
            faults.append({"after_requests": int(at * requests), "fault": what})

        async def one(number: int) -> None:
            nonlocal in_flight
            in_flight += 1
            try:
                if number % 10 == 9 or number >= requests - concurrency:
                    request = tail if number >= requests - concurrency else classify
                    reply = await zoo.Classify(request, timeout=60)
                    labels = {r.predictions[0].label for r in reply.results}
                    good = labels == {DIGIT.parent.name} and len(reply.results) == len(
                        request.images
                    )
                    version = reply.version
                else:
                    reply = await inference.ModelInfer(infer, timeout=60)
                    version = reply.model_version
                    good = reply.raw_output_contents[0] == expected.get(version)
                outcomes["OK" if good else f"wrong answer (version {version})"] += 1
                versions[version] += 1
            except grpc.aio.AioRpcError as err:
                outcomes[f"{err.code().name}: {err.details()[:80]}"] += 1
            finally:
                in_flight -= 1

        async def caller() -> None:
            nonlocal sent
            while sent < requests:
                number = sent
                sent += 1
                if number == int(0.3 * requests):
                    inject(0.3, "hot reload: version 2 renamed in", 2)
                elif number == int(0.6 * requests):
                    inject(0.6, "corrupt version 3 (flipped byte in model.onnx) renamed in", 3)
                if sent == requests:
                    all_sent.set()
                await one(number)

        before = memory_kib(proc.pid)
        started = time.perf_counter()
        callers = [asyncio.ensure_future(caller()) for _ in range(concurrency)]
        await all_sent.wait()
        await asyncio.sleep(0.05)  # the last request has reached the server
        after = memory_kib(proc.pid)
        at_sigterm = in_flight
        proc.send_signal(signal.SIGTERM)
        faults.append(
            {"after_requests": requests, "fault": f"SIGTERM with {at_sigterm} requests in flight"}
        )
        await asyncio.gather(*callers)
        seconds = time.perf_counter() - started
    code = proc.wait(60)
    answered = outcomes["OK"]
    return {
        "requests": requests,
        "concurrency": concurrency,
        "answered_correctly": answered,
        "lost": requests - answered,
        "outcomes": dict(outcomes),
        "versions_answered": dict(versions),
        "faults": faults,
        "in_flight_at_sigterm": at_sigterm,
        "seconds": round(seconds, 2),
        "req_per_s": round(requests / seconds, 1),
        "rss_before_mib": round(before["VmRSS"] / 1024, 1),
        "rss_after_mib": round(after["VmRSS"] / 1024, 1),
        "rss_peak_mib": round(after["VmHWM"] / 1024, 1),
        "exit_code": code,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cnnzoo-soak-") as tmp:
        work = Path(tmp)
        served, staging = build(work)
        port = free_port()
        log_path = work / "server.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cnnzoo",
                    "serve",
                    "--repository",
                    str(served),
                    "--port",
                    str(port),
                    "--http-port",
                    "-1",
                    "--metrics-port",
                    "-1",
                    "--poll-seconds",
                    "0.2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
            deadline = time.monotonic() + 120
            while "serving on" not in log_path.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start:\n{log_path.read_text()}")
                time.sleep(0.1)
            try:
                result = asyncio.run(
                    soak(
                        f"127.0.0.1:{port}", proc, served, staging, args.requests, args.concurrency
                    )
                )
            finally:
                if proc.poll() is None:
                    proc.kill()
        server_log = log_path.read_text()
    result["version_3_refused"] = f"refused {MODEL} version 3" in server_log
    result["tracebacks_in_server_log"] = server_log.count("Traceback")
    result["machine"] = f"{platform.machine()} {os.cpu_count()} cores"
    table = "\n".join(
        [
            "| requests | concurrency | lost | answers by version | v3 refused "
            "| RSS before -> after (peak) MiB | req/s | exit |",
            "|---:|---:|---:|---|---|---|---:|---:|",
            f"| {result['requests']} | {result['concurrency']} | {result['lost']} | "
            f"{', '.join(f'v{v}: {n}' for v, n in sorted(result['versions_answered'].items()))} | "
            f"{'yes' if result['version_3_refused'] else 'NO'} | {result['rss_before_mib']} -> "
            f"{result['rss_after_mib']} ({result['rss_peak_mib']}) | {result['req_per_s']} | "
            f"{result['exit_code']} |",
        ]
    )
    print(table)
    if result["lost"]:
        print("lost requests:", {k: v for k, v in result["outcomes"].items() if k != "OK"})
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"soak_cpu-{os.cpu_count()}cores_{args.requests}req_c{args.concurrency}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out / name}", file=sys.stderr)
    ok = not result["lost"] and result["exit_code"] == 0 and result["version_3_refused"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
