"""Concurrency bursts from one real client: every call must be answered.

One `tritonclient.grpc.aio` client (one channel, so one HTTP/2 connection, as an application
has) keeps `c` ModelInfer calls in flight on lenet5-mnist, batch 1, until `--calls` have been
made, for c = 96, 200 and 300. Counted: calls, failures by status, calls per second. The server
runs twice in the same run:

- `cnnzoo (defaults)`: calls over `--max-concurrent-requests` (256) wait in the call queue, and
  a connection may open 1024 streams;
- `reference: refuse`: `--max-concurrent-streams 128 --max-waiting-requests 1`, which behaves
  as the server did before the call queue: streams over 128 per connection wait on the client,
  and (nearly) every call over the concurrency limit is refused.

Prints a markdown table and writes JSON to bench/results/.

    python bench/bursts.py [--calls 6000] [--concurrency 96 200 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import export, server  # noqa: E402

MODEL = "lenet5-mnist"
CONFIGURATIONS = {
    "cnnzoo (defaults)": [],
    "reference: refuse": ["--max-concurrent-streams", "128", "--max-waiting-requests", "1"],
}


async def burst(target: str, concurrency: int, calls: int) -> dict:
    """`concurrency` callers on one client until `calls` are made; outcomes by status."""
    import tritonclient.grpc.aio as triton
    from tritonclient.utils import InferenceServerException

    x = np.zeros((1, 1, 32, 32), np.float32)
    client = triton.InferenceServerClient(target)
    outcomes: Counter[str] = Counter()
    examples: dict[str, str] = {}
    left = calls

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            try:
                await client.infer(MODEL, [tensor], client_timeout=120)
                outcomes["OK"] += 1
            except InferenceServerException as err:
                status = str(err.status() or "client")
                outcomes[status] += 1
                examples.setdefault(status, (err.message() or "")[:160])

    try:
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        await client.infer(MODEL, [tensor])  # connected and warm
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    finally:
        await client.close()
    failures = calls - outcomes["OK"]
    return {
        "calls": calls,
        "failures": failures,
        "outcomes": dict(outcomes),
        "examples": examples,
        "calls_per_s": calls / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=6000, help="calls per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[96, 200, 300])
    parser.add_argument("--repository", type=Path, help="reuse a repository with lenet5-mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        repository = args.repository or Path(work) / "repository"
        export(repository, MODEL)
        rows: dict[str, dict[int, dict]] = {}
        for name, flags in CONFIGURATIONS.items():
            rows[name] = {}
            with server(repository, [MODEL], "cpu", "--intra-op-threads", "1", *flags) as (
                target,
                _,
            ):
                for concurrency in args.concurrency:
                    print(f"{name}: c{concurrency} ...", file=sys.stderr, flush=True)
                    rows[name][concurrency] = asyncio.run(burst(target, concurrency, args.calls))

    lines = [
        "| server | concurrency | calls | failures | failures by status | calls/s |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for name, by_concurrency in rows.items():
        for concurrency, row in by_concurrency.items():
            failed = {k: v for k, v in row["outcomes"].items() if k != "OK"}
            lines.append(
                f"| {name} | {concurrency} | {row['calls']} | {row['failures']} | "
                f"{', '.join(f'{k}: {v}' for k, v in failed.items()) or '-'} | "
                f"{row['calls_per_s']:.0f} |"
            )
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"bursts_cpu-{os.cpu_count()}cores_{platform.machine()}.json"
    out.write_text(json.dumps({"calls_per_concurrency": args.calls, "rows": rows}, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
