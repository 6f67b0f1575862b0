"""Callers take turns: a light client's one-image Classify while a heavy client keeps a backlog.

A real `cnnzoo serve` (lenet5-mnist, default limits, and once with `--max-concurrent-requests
2`). The heavy client, on its own gRPC connection, keeps `--heavy` Classify calls of eight
9-megapixel PNGs in flight for the whole measurement; the light client, on another connection,
makes `--light` one-digit Classify calls one after another. Reported: the light call's latency
(median, p90, max) during the backlog, against the same call on the idle server (the reference,
measured in the same run), and how long one heavy call takes meanwhile (what the light client
would wait for each queued heavy call if the server served calls first come, first served).

Prints a markdown table and writes JSON to bench/results/.

    python bench/fairness.py [--heavy 24] [--light 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import export, server  # noqa: E402

MODEL = "lenet5-mnist"
CONFIGURATIONS = {
    "defaults": [],
    "--max-concurrent-requests 2": ["--max-concurrent-requests", "2"],
}


def heavy_images(count: int = 8, side: int = 3000) -> list[bytes]:
    from PIL import Image

    ramp = np.linspace(0, 255, side, dtype=np.float32)
    grey = ((ramp[None, :] + ramp[:, None]) / 2).astype(np.uint8)
    images = []
    for seed in range(count):
        buffer = io.BytesIO()
        pixels = np.stack([grey, np.roll(grey, seed, axis=0), grey.T], axis=-1)
        Image.fromarray(pixels).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


async def measure(target: str, heavy: int, light: int, images: list[bytes]) -> dict:
    import grpc

    from cnnzoo.protos import zoo_pb2, zoo_pb2_grpc

    digit = next((ROOT / "examples" / "digits").glob("*/*.png")).read_bytes()
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 1 << 26)]
    heavy_channel = grpc.aio.insecure_channel(target, options=options)
    light_channel = grpc.aio.insecure_channel(target, options=options)
    heavy_stub = zoo_pb2_grpc.ZooStub(heavy_channel)
    light_stub = zoo_pb2_grpc.ZooStub(light_channel)
    one = zoo_pb2.ClassifyRequest(model=MODEL, images=[digit])
    big = zoo_pb2.ClassifyRequest(model=MODEL, images=images)

    async def light_calls() -> list[float]:
        latencies = []
        for _ in range(light):
            started = time.perf_counter()
            await light_stub.Classify(one)
            latencies.append((time.perf_counter() - started) * 1e3)
        return latencies

    await light_stub.Classify(one)
    await heavy_stub.Classify(big)
    idle = await light_calls()
    stop = False
    heavy_ms: list[float] = []

    async def heavy_caller() -> None:
        while not stop:
            started = time.perf_counter()
            await heavy_stub.Classify(big)
            heavy_ms.append((time.perf_counter() - started) * 1e3)

    callers = [asyncio.ensure_future(heavy_caller()) for _ in range(heavy)]
    await asyncio.sleep(1.0)  # the backlog builds up
    busy = await light_calls()
    stop = True
    await asyncio.gather(*callers)
    await heavy_channel.close()
    await light_channel.close()
    return {
        "idle_ms": summary(idle),
        "backlog_ms": summary(busy),
        "heavy_call_ms": summary(heavy_ms),
        "heavy_calls_in_flight": heavy,
    }


def summary(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "p90": float(np.percentile(values, 90)),
        "max": max(values),
        "count": len(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heavy", type=int, default=24, help="heavy calls kept in flight")
    parser.add_argument("--light", type=int, default=20, help="light calls measured")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    images = heavy_images()
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        repository = Path(work) / "repository"
        export(repository, MODEL)
        for name, flags in CONFIGURATIONS.items():
            print(f"{name} ...", file=sys.stderr, flush=True)
            with server(repository, [MODEL], "cpu", *flags) as (target, _):
                rows[name] = asyncio.run(measure(target, args.heavy, args.light, images))

    lines = [
        "| server | light call, idle (median) | light call during the backlog (median / p90 / max) "
        "| one heavy call meanwhile (median) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in rows.items():
        busy = row["backlog_ms"]
        lines.append(
            f"| {name} | {row['idle_ms']['median']:.1f} ms | {busy['median']:.0f} / "
            f"{busy['p90']:.0f} / {busy['max']:.0f} ms | {row['heavy_call_ms']['median']:.0f} ms |"
        )
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"fairness_cpu-{os.cpu_count()}cores_{platform.machine()}.json"
    info = {"heavy_images_per_call": len(images), "heavy_image_pixels": 3000 * 3000}
    out.write_text(json.dumps({**info, "rows": rows}, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
