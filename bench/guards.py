"""What the access log and restricted API groups cost a unary ModelInfer call.

One `cnnzoo serve` per configuration (lenet5-mnist, batch-1 requests, one asyncio caller, so the
figures are per-call latencies, not throughput under contention): no interceptor (the reference),
`--access-log`, `--grpc-restricted-protocol inference:...` (the caller sends the header), and
both. Prints a markdown table (p50 and mean latency, the added microseconds against the
reference: the median over interleaved rounds of each round's difference) and, measured in
process, what the checks themselves cost per call (the restriction's header comparison; the
access log's wrapper and queued line; the call gate every server runs: a place in the call
queue and the caller recorded, so the reference "none" includes it); writes JSON to
bench/results/.

    python bench/guards.py [--requests 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import infer_request, server  # noqa: E402

MODEL = "lenet5-mnist"
KEY = "bench-key"


def configurations(work: Path) -> dict[str, list[str]]:
    restricted = ["--grpc-restricted-protocol", "inference:k=env:CNNZOO_BENCH_KEY"]
    log = ["--access-log", str(work / "access.jsonl")]
    return {"none": [], "access log": log, "restricted": restricted, "both": log + restricted}


async def latencies(target: str, requests: int) -> list[float]:
    import grpc

    from cnnzoo.protos import grpc_service_pb2_grpc

    request = infer_request(MODEL, np.zeros((1, 1, 32, 32), np.float32))
    metadata = (("triton-grpc-protocol-k", KEY),)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(200):  # warm-up
            await stub.ModelInfer(request, metadata=metadata)
        out = []
        for _ in range(requests):
            started = time.perf_counter()
            await stub.ModelInfer(request, metadata=metadata)
            out.append(time.perf_counter() - started)
    return out


class _Context:
    """The few ServicerContext methods the access log's wrapper calls (in-process timing)."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def code(self) -> None:
        return None

    def time_remaining(self) -> None:
        return None


def in_process_costs(calls: int = 20_000) -> dict[str, float]:
    """Per-call cost of the checks alone, without gRPC around them (µs)."""
    import grpc

    from cnnzoo.serving.access_log import AccessLog
    from cnnzoo.serving.call_queue import CallQueue
    from cnnzoo.serving.grpc_api.gate import GateInterceptor
    from cnnzoo.serving.grpc_api.interceptors import (
        AccessLogInterceptor,
        RestrictedProtocolInterceptor,
    )
    from cnnzoo.serving.security import RestrictedProtocols, parse_restriction

    class Details(grpc.HandlerCallDetails):
        method = "/inference.GRPCInferenceService/ModelInfer"
        invocation_metadata = (("user-agent", "grpc-python"), ("triton-grpc-protocol-k", KEY))

    details = Details()
    request = infer_request(MODEL, np.zeros((1, 1, 32, 32), np.float32))

    async def answer(request, context):  # noqa: ANN001, ANN202
        return request

    handler = grpc.unary_unary_rpc_method_handler(answer)

    async def continuation(_details):  # noqa: ANN001, ANN202
        return handler

    async def timed(interceptor) -> float:  # noqa: ANN001
        started = time.perf_counter()
        for _ in range(calls):
            if interceptor is None:
                wrapped = await continuation(details)
            else:
                wrapped = await interceptor.intercept_service(continuation, details)
            await wrapped.unary_unary(request, _Context())
        return (time.perf_counter() - started) / calls * 1e6

    async def run() -> dict[str, float]:
        restriction = parse_restriction("inference:k=env:K", environ={"K": KEY})
        with tempfile.TemporaryDirectory() as tmp:
            log = AccessLog(Path(tmp) / "access.jsonl")
            bare = await timed(None)
            costs = {
                "restriction check": await timed(
                    RestrictedProtocolInterceptor(RestrictedProtocols([restriction]))
                ),
                "access log": await timed(AccessLogInterceptor(log)),
                "call gate (always on)": await timed(GateInterceptor(CallQueue(256), "127.0.0.1")),
            }
            log.close()
        return {name: us - bare for name, us in costs.items()}

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cnnzoo-guards-") as tmp:
        work = Path(tmp)
        repository = work / "repository"
        subprocess.run(
            [sys.executable, "-m", "cnnzoo", "export", MODEL, "--repository", str(repository)],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        samples: dict[str, list[float]] = {name: [] for name in configurations(work)}
        round_p50: dict[str, list[float]] = {name: [] for name in configurations(work)}
        os.environ["CNNZOO_BENCH_KEY"] = KEY  # the restriction's value, for the servers
        for _ in range(args.rounds):  # interleaved rounds: drift on a shared machine evens out
            for name, extra in configurations(work).items():
                with server(repository, [MODEL], "cpu", *extra) as (target, _rest):
                    values = asyncio.run(latencies(target, args.requests))
                samples[name] += values
                round_p50[name].append(float(np.median(values)) * 1e6)
    for name, values in samples.items():
        us = np.asarray(values) * 1e6
        rows[name] = {
            "p50_us": float(np.median(us)),
            "mean_us": float(us.mean()),
            # the median over rounds of (this configuration's p50 - the reference's p50)
            "added_p50_us": float(np.median(np.subtract(round_p50[name], round_p50["none"]))),
            "round_p50_us": round_p50[name],
        }
    micro = in_process_costs()
    lines = ["| interceptors | p50 µs | mean µs | added p50 µs |", "|---|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['p50_us']:.0f} | {row['mean_us']:.0f} | {row['added_p50_us']:+.0f} |"
        )
    lines += ["", "| the check alone, in process | µs per call |", "|---|---:|"]
    lines += [f"| {name} | {us:.1f} |" for name, us in micro.items()]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"guards_cpu-{os.cpu_count()}cores_{platform.machine()}.json"
    document = {
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "rows": rows,
        "in_process_us_per_call": micro,
    }
    (args.out / name).write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
