"""Benchmark the interpretability code against its references, measured in the same run.

1. Top-k scan of the MNIST test set (10,000 images, every channel of every lenet5-mnist
   convolution) vs plain inference over the same preprocessed batches (target: <= 1.3x).
2. Batched unit projections (`interpret.projection.project_units`) vs one backward pass per unit
   (Captum's `NeuronDeconvolution`, unit by unit) (target: >= 3x faster).
3. Guided backprop images/s on resnet18-imagenet at 224 px: `interpret.GuidedBackprop` vs Captum's
   `GuidedBackprop` called directly (target: no worse).
4. Wall time of the full lenet5-mnist Fig. 2 job (examples/jobs/lenet5-mnist-fig2.toml), one
   process and under `torchrun --nproc-per-node 2`.
5. The full-test-set maximal-activation job (every conv stage, 8 channels each, top-9, projections
   and gallery) for resnet20-cifar10 and alexnet-cifar10 vs plain inference over the same 10,000
   images read through the same dataset loader (target: <= 1.5x).
6. Activation maximisation units/s: 32 units of resnet20-cifar10 `layer3.2.conv2` optimised
   together vs one unit at a time (target: >= 4x from batching).

Prints a markdown table and writes JSON to bench/results/interpret_<device>_torch<version>.json.

    CNNZOO_DATA=/path/to/data .venv/bin/python bench/interpret.py [--quick] [--parts 5,6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnzoo import zoo  # noqa: E402
from cnnzoo.interpret.attribution import GuidedBackprop  # noqa: E402
from cnnzoo.interpret.jobs import load_job, run_job  # noqa: E402
from cnnzoo.interpret.projection import Unit, project_units  # noqa: E402
from cnnzoo.interpret.rules import left_as_found  # noqa: E402
from cnnzoo.interpret.scan import scan_topk  # noqa: E402
from cnnzoo.zoo.datasets import get_dataset  # noqa: E402

FIG2_JOB = ROOT / "examples" / "jobs" / "lenet5-mnist-fig2.toml"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired(
    ours: Callable[[], Any], reference: Callable[[], Any], device: torch.device, repeats: int
) -> dict[str, Any]:
    """Time both functions alternately (one warm-up call each); the machine may be shared, so
    the ratio uses each side's fastest run (the least disturbed one) and medians are kept too."""
    ours()
    reference()
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(repeats):
        for key, fn in (("ours", ours), ("reference", reference)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - start)
    return {
        "ours_seconds": min(times["ours"]),
        "reference_seconds": min(times["reference"]),
        "ours_median_seconds": statistics.median(times["ours"]),
        "reference_median_seconds": statistics.median(times["reference"]),
        "repeats": repeats,
    }


def mnist_batches(
    device: torch.device, batch_size: int, limit: int | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The MNIST test set preprocessed once (so both sides time the model, not PIL)."""
    entry = zoo.get_entry("lenet5-mnist")
    dataset = get_dataset("mnist", "test", transform=entry.preprocess.torch_transform())
    count = len(dataset) if limit is None else min(limit, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)])
    return [
        (images[i : i + batch_size].to(device), torch.arange(i, min(i + batch_size, count)))
        for i in range(0, count, batch_size)
    ]


def bench_scan(device: torch.device, repeats: int, limit: int | None) -> dict[str, Any]:
    model = zoo.build_model("lenet5-mnist", weights="default").to(device)
    batches = mnist_batches(device, 500, limit)
    layers = {
        "features.c1": list(range(6)),
        "features.c3": list(range(16)),
        "features.c5": list(range(120)),
    }

    def plain() -> None:
        with left_as_found(model), torch.inference_mode():
            for images, _ in batches:
                model(images)

    def scan() -> None:
        scan_topk(model, layers, batches, k=9)

    timing = paired(scan, plain, device, repeats)
    return {
        "images": sum(len(i) for _, i in batches),
        "channels": sum(len(c) for c in layers.values()),
        **timing,
        "ratio": timing["ours_seconds"] / timing["reference_seconds"],
        "target": "<= 1.3",
    }


def _captum_units(
    model: torch.nn.Module, layer: str, images: torch.Tensor, units: list[Unit]
) -> torch.Tensor:
    from captum.attr import NeuronDeconvolution

    method = NeuronDeconvolution(model, model.get_submodule(layer))
    maps = []
    for unit in units:
        x = images[unit.image : unit.image + 1].clone().requires_grad_(True)
        maps.append(method.attribute(x, neuron_selector=(unit.channel, unit.y, unit.x)))
    return torch.cat(maps)


def bench_projections(device: torch.device, repeats: int) -> list[dict[str, Any]]:
    rows = []
    cases = [
        ("lenet5-mnist", "default", "features.c3", (1, 32, 32), 16, 9),
        ("resnet18-imagenet", None, "layer2.0.conv2", (3, 224, 224), 8, 4),
    ]
    for name, weights, layer, shape, channels, per_channel in cases:
        model = zoo.build_model(name, weights=weights).to(device)
        images = torch.randn(per_channel, *shape, device=device)
        units = []
        side = {"features.c3": 10, "layer2.0.conv2": 28}[layer]
        for c in range(channels):
            for i in range(per_channel):
                units.append(Unit(i, c, (3 * c + i) % side, (5 * c + 2 * i) % side))
        ours = project_units(model, layer, images, units, batch_size=64)
        theirs = _captum_units(model, layer, images, units)
        same = bool(torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6))
        timing = paired(
            lambda m=model, lyr=layer, im=images, u=units: project_units(
                m, lyr, im, u, batch_size=64
            ),
            lambda m=model, lyr=layer, im=images, u=units: _captum_units(m, lyr, im, u),
            device,
            repeats,
        )
        rows.append(
            {
                "model": name,
                "weights": weights or "random init",
                "layer": layer,
                "units": len(units),
                **timing,
                "speedup": timing["reference_seconds"] / timing["ours_seconds"],
                "maps_equal": same,
                "target": ">= 3",
            }
        )
    return rows


def bench_guided(device: torch.device, repeats: int, batch: int) -> dict[str, Any]:
    from captum.attr import GuidedBackprop as CaptumGuided

    model = zoo.build_model("resnet18-imagenet").to(device)  # speed does not depend on the weights
    x = torch.randn(batch, 3, 224, 224, device=device)
    target = torch.arange(batch, device=device) % 1000
    ours = GuidedBackprop(model)
    theirs = CaptumGuided(model)
    same = bool(
        torch.allclose(
            ours.attribute(x, target=target),
            theirs.attribute(x, target=target),
            rtol=1e-4,
            atol=1e-7,
        )
    )
    timing = paired(
        lambda: ours.attribute(x, target=target),
        lambda: theirs.attribute(x, target=target),
        device,
        repeats,
    )
    return {
        "model": "resnet18-imagenet (random init)",
        "batch": batch,
        **timing,
        "ours_images_per_s": batch / timing["ours_seconds"],
        "captum_images_per_s": batch / timing["reference_seconds"],
        "ratio": timing["reference_seconds"] / timing["ours_seconds"],
        "maps_equal": same,
        "target": "ours >= captum",
    }


def bench_fig2_job() -> dict[str, Any]:
    job = load_job(FIG2_JOB)
    result: dict[str, Any] = {"job": str(FIG2_JOB.relative_to(ROOT))}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_job(job, Path(tmp) / "one")
        result["one_process_seconds"] = time.perf_counter() - start
        manifest = json.loads((Path(tmp) / "one" / "manifest.json").read_text())
        result["one_process_timings"] = manifest["timings"]
        result["pngs"] = sum(len(a["files"]) for a in manifest["analyses"])
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        if torchrun:
            out = Path(tmp) / "two"
            start = time.perf_counter()
            subprocess.run(
                [
                    torchrun,
                    "--standalone",
                    "--nproc-per-node=2",
                    "-m",
                    "cnnzoo",
                    "job",
                    str(FIG2_JOB),
                    "--out",
                    str(out),
                    "--no-progress",
                ],
                check=True,
                capture_output=True,
            )
            result["torchrun_2_seconds"] = time.perf_counter() - start
            one = json.loads((Path(tmp) / "one" / "manifest.json").read_text())
            two = json.loads((out / "manifest.json").read_text())
            one.pop("timings")
            two.pop("timings")
            result["torchrun_equals_one_process"] = one == two
    return result


CIFAR_JOBS = {
    "resnet20-cifar10": ["conv1", "layer1", "layer2", "layer3"],
    "alexnet-cifar10": ["features.0", "features.4", "features.8", "features.10", "features.12"],
}


def _plain_inference(
    model: torch.nn.Module, dataset: Any, count: int, device: torch.device
) -> None:
    """The first `count` images of `dataset` through `model`, as a job's scan reads them."""
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(dataset, range(count)), batch_size=256)
    with left_as_found(model), torch.inference_mode():
        for images, _ in loader:
            model(images.to(device))


def bench_cifar_jobs(device: torch.device, limit: int | None) -> list[dict[str, Any]]:
    """Each CIFAR-10 model's max-activations job vs plain inference over the same images."""
    rows = []
    for name, layers in CIFAR_JOBS.items():
        entry = zoo.get_entry(name)
        dataset = get_dataset("cifar10", "test", transform=entry.preprocess.torch_transform())
        count = len(dataset) if limit is None else min(limit, len(dataset))
        model = zoo.build_model(name, weights="default").to(device)
        subset = "" if limit is None else f"subset = {count}\n"
        text = (
            f'name = "{name}-max"\nmodel = "{name}"\ndevice = "{device.type}"\n'
            f'[dataset]\nname = "cifar10"\n{subset}batch_size = 256\n'
            f'[[analyses]]\nkind = "max-activations"\nlayers = {json.dumps(layers)}\n'
            "channels = 8\n"
            + ('projection = "guided-backprop"\n' if name.startswith("resnet") else "")
        )

        with tempfile.TemporaryDirectory() as tmp:
            job_file = Path(tmp) / "job.toml"
            job_file.write_text(text)
            _plain_inference(model, dataset, count, device)  # warm-up: page cache, kernels
            sync(device)
            start = time.perf_counter()
            _plain_inference(model, dataset, count, device)
            sync(device)
            plain_seconds = time.perf_counter() - start
            start = time.perf_counter()
            run_job(load_job(job_file), Path(tmp) / "out")
            sync(device)
            job_seconds = time.perf_counter() - start
            manifest = json.loads((Path(tmp) / "out" / "manifest.json").read_text())
        rows.append(
            {
                "model": name,
                "images": count,
                "layers": layers,
                "job_seconds": job_seconds,
                "scan_seconds": manifest["timings"]["01-max-activations"]["scan_seconds"],
                "plain_seconds": plain_seconds,
                "ratio": job_seconds / plain_seconds,
                "target": "<= 1.5",
            }
        )
    return rows


def bench_actmax(device: torch.device, units: int, steps: int) -> dict[str, Any]:
    """Activation maximisation of `units` units batched vs one at a time."""
    from cnnzoo.interpret.actmax import Regularisers, maximise_units

    model = zoo.build_model("resnet20-cifar10", weights="default").to(device)
    chosen = [(c, 4, 4) for c in range(units)]
    settings = Regularisers(steps=steps)

    def run(batch_size: int) -> float:
        start = time.perf_counter()
        maximise_units(
            model, "layer3.2.conv2", chosen, (3, 32, 32), regularisers=settings,
            batch_size=batch_size,
        )  # fmt: skip
        sync(device)
        return time.perf_counter() - start

    run(units)  # warm-up
    batched, alone = run(units), run(1)
    return {
        "model": "resnet20-cifar10",
        "layer": "layer3.2.conv2",
        "units": units,
        "steps": steps,
        "batched_units_per_s": units / batched,
        "one_at_a_time_units_per_s": units / alone,
        "speedup": alone / batched,
        "target": ">= 4",
    }


def table(results: dict[str, Any]) -> list[str]:
    """The markdown table: fastest runs, ratios from them."""
    rows = [
        f"interpret benchmarks on {results['device']}, torch {results['torch']}, "
        f"{results['threads']} threads (fastest of the alternating runs)",
        "",
        "| benchmark | ours | reference | ratio | target |",
        "|---|---|---|---|---|",
    ]
    if "scan" in results:
        scan = results["scan"]
        rows.append(
            f"| top-k scan of MNIST test ({scan['images']} images, {scan['channels']} channels) "
            f"vs plain inference | {scan['ours_seconds']:.2f} s "
            f"| {scan['reference_seconds']:.2f} s | {scan['ratio']:.2f}x the time "
            f"| {scan['target']} |"
        )
    for row in results.get("projections", []):
        rows.append(
            f"| {row['units']} unit projections, {row['model']} `{row['layer']}`: batched vs one "
            f"backward per unit (Captum NeuronDeconvolution) | {row['ours_seconds']:.2f} s "
            f"| {row['reference_seconds']:.2f} s | {row['speedup']:.1f}x faster "
            f"(maps equal: {row['maps_equal']}) | {row['target']} |"
        )
    if "guided_backprop" in results:
        guided = results["guided_backprop"]
        rows.append(
            f"| guided backprop, {guided['model']} 224 px, batch {guided['batch']}, vs Captum "
            f"GuidedBackprop | {guided['ours_images_per_s']:.1f} img/s "
            f"| {guided['captum_images_per_s']:.1f} img/s | {guided['ratio']:.2f}x "
            f"(maps equal: {guided['maps_equal']}) | {guided['target']} |"
        )
    if "fig2_job" in results:
        job = results["fig2_job"]
        two = "-"
        if "torchrun_2_seconds" in job:
            equal = job["torchrun_equals_one_process"]
            two = f"{job['torchrun_2_seconds']:.1f} s under torchrun x2 (same results: {equal})"
        rows.append(
            f"| full Fig. 2 job, lenet5-mnist over MNIST test, {job['pngs']} PNGs "
            f"| {job['one_process_seconds']:.1f} s | {two} | | |"
        )
    for row in results.get("cifar_jobs", []):
        rows.append(
            f"| max-activations job, {row['model']} over {row['images']} CIFAR-10 test images "
            f"({len(row['layers'])} layers x 8 channels, top-9, projections, gallery) vs plain "
            f"inference | {row['job_seconds']:.1f} s (scan {row['scan_seconds']:.1f} s) "
            f"| {row['plain_seconds']:.1f} s | {row['ratio']:.2f}x the time | {row['target']} |"
        )
    if "actmax" in results:
        actmax = results["actmax"]
        rows.append(
            f"| activation maximisation, {actmax['units']} units of {actmax['model']} "
            f"`{actmax['layer']}`, {actmax['steps']} steps: batched vs one unit at a time "
            f"| {actmax['batched_units_per_s']:.2f} units/s "
            f"| {actmax['one_at_a_time_units_per_s']:.2f} units/s "
            f"| {actmax['speedup']:.1f}x faster | {actmax['target']} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and images (smoke run)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--parts",
        default="1,2,3,4,5,6",
        help="which benchmarks to run (numbers of the module docstring); the others' figures "
        "are kept from the results file",
    )
    args = parser.parse_args()
    parts = {int(part) for part in args.parts.split(",")}
    warnings.filterwarnings("ignore", module="captum")
    device = torch.device(
        "cuda"
        if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    repeats = 2 if args.quick else 7
    if device.type == "cpu":
        label = f"cpu-{os.cpu_count()}cores"
    else:
        label = torch.cuda.get_device_name(device).replace(" ", "-")
    out = (
        ROOT
        / "bench"
        / "results"
        / f"interpret_{label}_torch{torch.__version__.split('+')[0]}.json"
    )
    benchmarks: dict[int, tuple[str, Callable[[], Any]]] = {
        1: ("scan", lambda: bench_scan(device, repeats, 2000 if args.quick else None)),
        2: ("projections", lambda: bench_projections(device, repeats)),
        3: ("guided_backprop", lambda: bench_guided(device, repeats, 4 if args.quick else 8)),
        4: ("fig2_job", bench_fig2_job),
        5: ("cifar_jobs", lambda: bench_cifar_jobs(device, 2000 if args.quick else None)),
        6: ("actmax", lambda: bench_actmax(device, 32, 20 if args.quick else 100)),
    }
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.update(
        {
            "device": label,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        }
    )
    for number in sorted(parts):
        key, run = benchmarks[number]
        results[key] = run()
    print("\n".join(table(results)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
