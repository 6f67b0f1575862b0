"""Benchmark the explanation-quality metrics against Quantus computing the same metrics, in the
same process, on the same maps and the same model.

For each model (lenet5-mnist on the MNIST test set, resnet20-cifar10 on the CIFAR-10 test set):

1. The quality table of every method of the table plus the random-map and edge baselines over
   `--images` test images (faithfulness) and the first `--sanity-images` of them (MPRT over every
   module Quantus randomises, random logit), as the `explanation-quality` kind computes it.
2. Wall time on identical work: `cnnzoo.interpret.quality` against Quantus (0.6.0) on the first
   `--quantus-images` images (faithfulness) and the same `--sanity-images` (sanity checks).
   Both sides get the same precomputed maps (Quantus' `a_batch`; computing them is timed apart,
   once); each Quantus metric is one call per method:
     deletion, mean fill    PixelFlipping(perturb_baseline=0.0), whole pixels in `--steps` steps
                            (an RGB image needs 3x the steps: Quantus flattens channels into
                            features and requires `features_in_step` to divide H x W)
     insertion, mean fill   PixelFlipping of the negated map (removing the least relevant
                            pixels leaves what inserting the most relevant ones gives)
     deletion/insertion,    ROAD (MoRF and LeRF) at the same fractions; Quantus 0.6.0's ROAD
       ROAD imputation      indexes pixels with the flattened channel-and-pixel order, so on RGB
                            images its own `noisy_linear_imputation` runs in a copy of ROAD's loop
                            with pixel indices
     MPRT                   MPRT(similarity_func=correlation_spearman), one measure (ours
                            computes three)
     random logit           RandomLogit(similarity_func=ssim), one measure (ours three)
   Average Drop has no Quantus metric and is timed on our side only (with the faithfulness).
   Each side's time is split into the model and explainer calls (the same networks on both
   sides: ours on ONNX Runtime for the curves) and the rest, the metric code's own work.
3. Peak memory of the metric code (numpy and Python allocations, `tracemalloc`; the models'
   own tensors are the same on both sides and not counted), ours at two `batch_size` settings to
   show the bound, and Quantus.

Prints markdown tables and writes JSON to bench/results/quality_<device>_torch<version>.json.

    CNNZOO_DATA=/path/to/data .venv/bin/python bench/quality.py [--images 1000]
        [--quantus-images 100] [--sanity-images 16] [--models lenet5-mnist,resnet20-cifar10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnzoo import zoo  # noqa: E402
from cnnzoo.interpret.methods import METHODS  # noqa: E402
from cnnzoo.interpret.quality.baselines import BASELINES, baseline_explainer  # noqa: E402
from cnnzoo.interpret.quality.confidence import confidence_change  # noqa: E402
from cnnzoo.interpret.quality.curves import perturbation_curves, predict  # noqa: E402
from cnnzoo.interpret.quality.report import evaluate, reading, summarise  # noqa: E402
from cnnzoo.interpret.quality.sanity import (  # noqa: E402
    model_randomisation,
    other_classes,
    random_logit,
)
from cnnzoo.interpret.quality.settings import QualitySettings, softmax  # noqa: E402
from cnnzoo.interpret.torch_backend import (  # noqa: E402
    explainer,
    method_maps,
    model_callable,
    onnx_model_callable,
    randomisation_stages,
)
from cnnzoo.zoo.datasets import get_dataset  # noqa: E402

DATASETS = {"lenet5-mnist": "mnist", "resnet20-cifar10": "cifar10"}


def _load(name: str, n: int) -> tuple[torch.nn.Module, np.ndarray]:
    entry = zoo.get_entry(name)
    images = get_dataset(DATASETS[name], "test", transform=entry.preprocess.torch_transform())
    x = torch.stack([images[i][0] for i in range(n)]).numpy()
    return zoo.build_model(name, weights="default").eval(), x


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _peak(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """fn's result, seconds and peak traced bytes."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        result, seconds = _timed(fn)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, seconds, peak


class Clock:
    """Seconds spent inside the calls it wraps, the outermost call only (an explainer's own model
    calls are not counted twice)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if not self._depth:
                    self.seconds += time.perf_counter() - start

        return timed


CLOCK = Clock()  # module-level: the models Quantus deep-copies keep timing into it


class TimedModule(torch.nn.Module):
    """`model` with its forward calls timed by `CLOCK` (for Quantus, which takes a module)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return CLOCK.wrap(self.model)(x)


def _in_calls(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds of fn, seconds of it inside `CLOCK`'s calls)."""
    before = CLOCK.seconds
    _, seconds = _timed(fn)
    return seconds, CLOCK.seconds - before


def quantus_layers(model: torch.nn.Module) -> list[str]:
    """Every module Quantus' MPRT randomises (those with reset_parameters), top first."""
    return [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]


# -- our side ---------------------------------------------------------------------------------


def ours_faithfulness(forward, x, targets, maps, settings) -> None:
    original = softmax(predict(forward, x, settings.batch_size))[np.arange(len(x)), targets]
    for filling in settings.fillings:
        perturbation_curves(forward, x, targets, maps, settings, filling)
    for m in maps.values():
        confidence_change(forward, x, targets, m, original, settings.batch_size)


def ours_sanity(model, forward, x, targets, maps, settings, layers) -> None:
    explainers = {m: CLOCK.wrap(explainer(model, m)) for m in METHODS}
    controls = {b: CLOCK.wrap(baseline_explainer(b)) for b in BASELINES}
    others = other_classes(targets, forward(x[:1]).shape[1])
    random_logit({**explainers, **controls}, x, others, maps)
    stages = (
        (name, {**{m: CLOCK.wrap(e) for m, e in ex.items()}, **controls})
        for name, ex in randomisation_stages(model, METHODS, layers, seed=0)
    )
    model_randomisation(stages, x, targets, maps)


# -- Quantus ----------------------------------------------------------------------------------


def _explain_func(method: str) -> Callable:
    if method in BASELINES:
        explain = baseline_explainer(method)
        return CLOCK.wrap(lambda model, inputs, targets, **kw: explain(inputs, targets)[:, None])

    def run(model, inputs, targets, **kw):
        found = explainer(model, method)(np.asarray(inputs, np.float32), np.asarray(targets))
        return found[:, None]

    return CLOCK.wrap(run)


def _road_rgb(model, x, targets, maps, percentages, noise) -> None:
    """Quantus ROAD's evaluate_batch with pixel indices (its own imputation, its own loop)."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    order = np.argsort(-maps.reshape(len(maps), -1), axis=1)
    pixels = maps[0].size
    for p in percentages:
        perturbed = np.stack(
            [
                noisy_linear_imputation(
                    arr=x[i], indices=order[i, : int(pixels * p / 100)], noise=noise
                )  # fmt: skip
                for i in range(len(x))
            ]
        )
        with torch.no_grad():
            logits = model(torch.from_numpy(perturbed.astype(np.float32)))
        _ = logits.argmax(dim=1).numpy() == targets


def quantus_faithfulness(model, x, targets, maps, settings) -> None:
    import quantus

    channels, height, width = x.shape[1:]
    pixels = height * width
    step = pixels // settings.steps  # features per Quantus step: a pixel-step in one channel
    percentages = [100 * s / settings.steps for s in range(1, settings.steps)]
    kwargs = {"model": model, "x_batch": x, "y_batch": targets, "device": "cpu",
              "batch_size": settings.batch_size}  # fmt: skip
    for m in maps.values():
        # least relevant first as most relevant first: the map reversed, kept non-negative
        # (Quantus refuses maps that are all below zero)
        reversed_map = m.max() - m
        for ordered in (m, reversed_map):
            metric = quantus.PixelFlipping(
                features_in_step=step, perturb_baseline=0.0, normalise=False,
                disable_warnings=True,
            )  # fmt: skip
            metric(a_batch=ordered[:, None], **kwargs)
            if channels == 1:
                road = quantus.ROAD(percentages=percentages, noise=settings.noise,
                                    normalise=False, disable_warnings=True)  # fmt: skip
                road(a_batch=ordered[:, None], **kwargs)
            else:
                _road_rgb(model, x, targets, ordered, percentages, settings.noise)


def quantus_sanity(model, x, targets, maps, settings) -> None:
    import quantus

    kwargs = {"model": model, "x_batch": x, "y_batch": targets, "device": "cpu",
              "batch_size": settings.batch_size}  # fmt: skip
    classes = int(model(torch.from_numpy(x[:1])).shape[1])
    for method, m in maps.items():
        explain = _explain_func(method)
        quantus.RandomLogit(num_classes=classes, disable_warnings=True)(
            a_batch=m[:, None], explain_func=explain, **kwargs
        )
        quantus.MPRT(disable_warnings=True, layer_order="top_down")(
            a_batch=m[:, None], explain_func=explain, **kwargs
        )


# -- the benchmark ----------------------------------------------------------------------------


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = QualitySettings(steps=args.steps, batch_size=args.batch_size)
    model, x = _load(name, args.images)
    # Our side runs the model calls on ONNX Runtime, as the job kind does (the export, once,
    # is timed and added to our faithfulness time); Quantus calls the PyTorch model.
    exported, export_seconds = _timed(lambda: onnx_model_callable(model, x))
    forward = exported or model_callable(model)
    targets = predict(forward, x, settings.batch_size).argmax(axis=1)
    layers = quantus_layers(model)
    print(f"{name}: {len(x)} images, {len(layers)} layers randomised", flush=True)
    maps, map_seconds = _timed(lambda: method_maps(model, METHODS, x, targets))
    maps.update({b: baseline_explainer(b)(x, targets) for b in BASELINES})
    # 1. the table, as the kind computes it
    stages = randomisation_stages(model, METHODS, layers, seed=0)
    explainers = {m: explainer(model, m) for m in METHODS}
    results, table_seconds = _timed(
        lambda: evaluate(
            forward, x, targets, {m: maps[m] for m in METHODS}, settings,
            explainers=explainers, stages=stages, sanity=args.sanity_images,
        )
    )  # fmt: skip
    rows = summarise(results)
    lines = reading(rows, name)
    print(f"  table: {table_seconds:.1f} s (maps {map_seconds:.1f} s)", flush=True)
    # 2. identical work on both sides
    q, s = args.quantus_images, args.sanity_images
    sub = {m: v[:q] for m, v in maps.items()}
    san = {m: v[:s] for m, v in maps.items()}
    # wall seconds and, under "_calls", the part inside model and explainer calls
    timings: dict[str, float] = {}
    timed_forward = CLOCK.wrap(forward)
    timings["ours_faithfulness"], timings["ours_faithfulness_calls"] = _in_calls(
        lambda: ours_faithfulness(timed_forward, x[:q], targets[:q], sub, settings)
    )
    timings["ours_faithfulness"] += export_seconds
    timings["ours_export"] = export_seconds
    timings["ours_sanity"], timings["ours_sanity_calls"] = _in_calls(
        lambda: ours_sanity(model, forward, x[:s], targets[:s], san, settings, layers)
    )
    print(f"  ours: {timings}", flush=True)
    timed = TimedModule(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timings["quantus_faithfulness"], timings["quantus_faithfulness_calls"] = _in_calls(
            lambda: quantus_faithfulness(timed, x[:q], targets[:q], sub, settings)
        )
        timings["quantus_sanity"], timings["quantus_sanity_calls"] = _in_calls(
            lambda: quantus_sanity(timed, x[:s], targets[:s], san, settings)
        )
    print(f"  quantus: {timings}", flush=True)
    # 3. memory, in a pass of its own (tracing allocations slows Python code down)
    m = min(q, args.memory_images)
    few = {k: v[:m] for k, v in maps.items()}
    peaks = {}
    for label, batch in (("ours", args.batch_size), ("ours_quarter_batch", args.batch_size // 4)):
        setting = QualitySettings(steps=args.steps, batch_size=max(1, batch))
        peaks[label] = _peak(
            lambda s=setting: ours_faithfulness(forward, x[:m], targets[:m], few, s)
        )[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peaks["quantus"] = _peak(
            lambda: quantus_faithfulness(model, x[:m], targets[:m], few, settings)
        )[2]
    ours = timings["ours_faithfulness"] + timings["ours_sanity"]
    theirs = timings["quantus_faithfulness"] + timings["quantus_sanity"]
    per_image = timings["quantus_faithfulness"] / q
    return {
        "model": name,
        "images": len(x),
        "sanity_images": s,
        "quantus_images": q,
        "randomised_layers": len(layers),
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "model_runtime": getattr(forward, "runtime", "torch"),
        "maps_seconds": round(map_seconds, 2),
        "table_seconds": round(table_seconds, 2),
        **{k: round(v, 2) for k, v in timings.items()},
        "speedup_faithfulness": round(
            timings["quantus_faithfulness"] / timings["ours_faithfulness"], 2
        ),
        "speedup_sanity": round(timings["quantus_sanity"] / timings["ours_sanity"], 2),
        "speedup": round(theirs / ours, 2),
        # the metric code's own work: wall time outside model and explainer calls (and, on
        # our side, outside the export)
        "speedup_own_code": round(
            (theirs - timings["quantus_faithfulness_calls"] - timings["quantus_sanity_calls"])
            / (
                ours
                - timings["ours_faithfulness_calls"]
                - timings["ours_sanity_calls"]
                - export_seconds
            ),
            2,
        ),
        "quantus_faithfulness_all_images_estimate_seconds": round(per_image * len(x), 1),
        "memory_images": m,
        "peak_mib": {k: round(v / 2**20, 1) for k, v in peaks.items()},
        "rows": [r.to_json() for r in rows],
        "reading": lines,
    }


COLUMNS = (
    ("deletion_mean", "del. mean"), ("deletion_road", "del. ROAD"),
    ("insertion_mean", "ins. mean"), ("insertion_road", "ins. ROAD"),
    ("difference_road", "ins-del ROAD"), ("average_drop", "Avg Drop %"),
    ("increase", "Incr. %"), ("mprt_ssim_top", "MPRT SSIM top"),
    ("mprt_rank_abs_top", "MPRT rank top"), ("mprt_ssim_all", "MPRT SSIM all"),
    ("logit_ssim", "logit SSIM"),
)  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    head = "| method | " + " | ".join(t for _, t in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for row in result["rows"]:
        cells = [
            "-" if row.get(k) is None else f"{row[k]:.1f}" if k in ("average_drop", "increase")
            else f"{row[k]:.3f}"
            for k, _ in COLUMNS
        ]  # fmt: skip
        name = f"*{row['method']}*" if row["baseline"] else row["method"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5-mnist,resnet20-cifar10")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--quantus-images", type=int, default=100)
    parser.add_argument("--sanity-images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--memory-images", type=int, default=64, help="images of the memory-tracing pass"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    label = f"cpu-{os.cpu_count()}cores"
    out = (
        ROOT / "bench" / "results" / f"quality_{label}_torch{torch.__version__.split('+')[0]}.json"
    )
    results = json.loads(out.read_text()) if out.is_file() else {}
    import quantus

    results.update(
        {
            "device": label,
            "machine": platform.machine(),
            "torch": torch.__version__,
            "quantus": quantus.__version__,
            "threads": torch.get_num_threads(),
        }
    )
    models = results.setdefault("models", {})
    for name in args.models.split(","):
        result = bench_model(name, args)
        models[name] = result
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"\n## {name}: {result['images']} test images (sanity checks on "
              f"{result['sanity_images']})\n")  # fmt: skip
        print(markdown(result))
        print("\n" + "\n".join(f"- {line}" for line in result["reading"]))
        print(
            f"\nwall time on identical work ({result['quantus_images']} images for the curves, "
            f"{result['sanity_images']} for the sanity checks): ours "
            f"{result['ours_faithfulness']} + {result['ours_sanity']} s, Quantus "
            f"{result['quantus_faithfulness']} + {result['quantus_sanity']} s: "
            f"{result['speedup']}x (curves {result['speedup_faithfulness']}x, sanity "
            f"{result['speedup_sanity']}x); peak MiB of the curves over "
            f"{result['memory_images']} images {result['peak_mib']}"
        )
    print(f"\n-> {out}")


if __name__ == "__main__":
    main()
