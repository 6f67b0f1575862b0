"""Explanation graphs (`cnnzoo.interpret.graphs`) against the PyTorch implementation and Captum:
every method on every model, batch 1 and batch 32, in ONNX Runtime's CPU provider.

Models: the zoo's trained lenet5-mnist, alexnet-cifar10 and resnet20-cifar10 as `cnnzoo export`
writes them (fp32; lenet5-mnist also with `--input-dtype uint8`, resnet20-cifar10 also `--fp16`,
compared with the fp32 PyTorch model), on the first 32 test images; torchvision's AlexNet,
ResNet-18 and ResNet-50 with random weights at 64x64 (torch.onnx, dynamo=True), on random images.
The methods use their defaults (integrated gradients: 50 Gauss-Legendre steps, as Captum).

Per model and method: the largest difference of a map from the reference relative to that map's
largest |value| at batch 1 (image 0) and batch 32, how many of the 32 maps are within 1e-5 (for
occlusion: 1e-5 or 2e-7 in probability), and in how many rows ONNX Runtime and PyTorch took a
different ReLU or max-pooling decision somewhere the method evaluates the model (a pre-activation
within float32 rounding of zero: those maps may legitimately differ; integrated gradients meets
such ties at its 50 scaled copies). Timings: building the graph, running it at batch 32, and the
PyTorch reference at batch 32 (same machine, same run). Also: the time to build every method's
graph for ResNet-50 at 224x224 from its model.onnx bytes, as the server would.

Prints a markdown table and writes JSON to
bench/results/explanation_parity_cpu-<cores>cores_ort<version>_torch<version>.json.

    CNNZOO_DATA=/path/to/data .venv/bin/python bench/explanation_parity.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnzoo import zoo  # noqa: E402
from cnnzoo.interpret.graph_export.parity import (  # noqa: E402
    OCCLUSION_FLOOR,
    PARITY_TOLERANCE,
    map_differences,
    pytorch_maps,
)
from cnnzoo.interpret.graphs import GRAPH_METHODS, build_explanation, gauss_legendre  # noqa: E402
from cnnzoo.interpret.graphs.classifier import Classifier  # noqa: E402
from cnnzoo.zoo.export import ExportOptions, export_model  # noqa: E402
from cnnzoo.zoo.repository import ModelRepository  # noqa: E402
from tests.interpret.graphs.helpers import (  # noqa: E402
    decisions_agree,
    dynamo_onnx,
    feeds_for,
    ort_session,
)

ZOO = {
    "lenet5-mnist": {},
    "alexnet-cifar10": {},
    "resnet20-cifar10": {},
    "lenet5-mnist (uint8 input)": {"input_dtype": "uint8"},
    "resnet20-cifar10 (fp16)": {"fp16": True},
}
TORCHVISION = ("alexnet", "resnet18", "resnet50")


def zoo_models(batch: int, data_dir: str | None) -> dict[str, tuple]:
    out = {}
    for key, options in ZOO.items():
        name = key.split(" ")[0]
        root = Path(tempfile.mkdtemp(prefix="parity-"))
        summary = export_model(ExportOptions(model=name, repository=root, **options))
        repo = ModelRepository(root)
        classifier = onnx.load(str(Path(summary["path"]) / "model.onnx"))
        entry = zoo.get_entry(name)
        data = entry.open_dataset("test", data_dir=data_dir, transform=lambda image: image)
        images = [data[i][0] for i in range(batch)]
        preprocess = repo.preprocess(name)
        x = torch.stack([preprocess.torch_transform()(image) for image in images])
        pixels = np.stack([preprocess.pixels(image) for image in images])
        graph_input = pixels if options.get("input_dtype") == "uint8" else x.numpy()
        model = repo.torch_model(name, summary["version"])
        out[key] = (classifier, model, x, graph_input, bool(options.get("fp16")))
    return out


def torchvision_models(batch: int) -> dict[str, tuple]:
    import torchvision

    out = {}
    for name in TORCHVISION:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        out[f"{name} (torchvision, 64x64)"] = (
            dynamo_onnx(model, x[:2]),
            model,
            x,
            x.numpy(),
            False,
        )
    return out


def decisions(classifier, model, graph_input, x, method: str, steps: int) -> np.ndarray:
    if method == "occlusion":
        return np.ones(len(x), dtype=bool)
    if method != "integrated-gradients":
        return decisions_agree(classifier, model, graph_input, x)
    network = Classifier(classifier).network()
    agree = np.ones(len(x), dtype=bool)
    for alpha in gauss_legendre(steps)[0]:
        scaled = x * np.float32(alpha)
        agree &= decisions_agree(network, model, scaled.numpy(), scaled)
    return agree


def measure(key: str, entry: tuple, method: str, steps: int) -> dict[str, Any]:
    classifier, model, x, graph_input, half = entry
    settings = {"steps": steps} if method == "integrated-gradients" else {}
    started = time.perf_counter()
    graph = build_explanation(classifier, method, **settings)
    build = time.perf_counter() - started
    facts = {e.key: e.value for e in graph.metadata_props}
    session = ort_session(graph)
    count = len(x)
    channels = np.arange(count) % 5
    feeds = feeds_for(graph, graph_input, target=(np.arange(count) * 3) % 7, channel=channels)
    names = [o.name for o in graph.graph.output]
    session.run(None, {k: v[:1] for k, v in feeds.items()})  # warm-up
    started = time.perf_counter()
    outputs = dict(zip(names, session.run(None, feeds), strict=True))
    ort_seconds = time.perf_counter() - started
    single = dict(zip(names, session.run(None, {k: v[:1] for k, v in feeds.items()}), strict=True))
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pytorch_maps(model, x, method, facts, outputs, channels=channels)
    torch_seconds = time.perf_counter() - started
    got = outputs["attribution"]
    floor = OCCLUSION_FLOOR if method == "occlusion" else 0.0
    within = sum(
        float(np.abs(a - r).max()) <= PARITY_TOLERANCE * float(np.abs(r).max()) + floor
        for a, r in zip(got, expected, strict=True)
    )
    row: dict[str, Any] = {
        "model": key,
        "method": method,
        "batch_1_max_rel_diff": map_differences(single["attribution"], expected[:1])[0],
        "batch_32_max_rel_diff": max(map_differences(got, expected)),
        "maps_within_tolerance": int(within),
        "n": count,
        "build_seconds": round(build, 3),
        "ort_seconds": round(ort_seconds, 3),
        "torch_seconds": round(torch_seconds, 3),
    }
    if half:  # against the fp32 model: how far half precision moves the maps
        a = got.reshape(count, -1).astype(np.float64)
        b = expected.reshape(count, -1).astype(np.float64)
        norms = np.sqrt((a * a).sum(1) * (b * b).sum(1))
        both = norms > 0  # an all-zero map (Grad-CAM of an absent class) has no direction
        cosine = (a * b).sum(1)[both] / norms[both]
        row["min_cosine_to_fp32"] = float(cosine.min()) if both.any() else None
        row["all_zero_maps"] = int((~both).sum())
        row["decision_ties"] = None
    else:
        row["decision_ties"] = int((~decisions(classifier, model, graph_input, x, method,
                                               steps)).sum())  # fmt: skip
    return row


def resnet50_build_times() -> dict[str, float]:
    """Seconds to build each method's graph for ResNet-50 (224x224) from model.onnx bytes."""
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    data = dynamo_onnx(model, torch.randn(2, 3, 224, 224)).SerializeToString()
    times = {}
    for method in GRAPH_METHODS:
        started = time.perf_counter()
        build_explanation(onnx.load_from_string(data), method)
        times[method] = round(time.perf_counter() - started, 3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 images, 8 integration steps")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    batch, steps = (8, 8) if args.quick else (32, 50)
    data_dir = os.environ.get("CNNZOO_DATA")
    models = {**zoo_models(batch, data_dir), **torchvision_models(batch)}
    rows = []
    for key, entry in models.items():
        for method in GRAPH_METHODS:
            row = measure(key, entry, method, steps)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    builds = resnet50_build_times()
    print(f"| model | method | batch 1 | batch {batch} | maps within 1e-5 | decision ties | "
          f"build s | ORT s | PyTorch s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ties = "-" if r["decision_ties"] is None else r["decision_ties"]
        extra = f" (cos {r['min_cosine_to_fp32']:.3f})" if r.get("min_cosine_to_fp32") else ""
        print(
            f"| {r['model']} | {r['method']} | {r['batch_1_max_rel_diff']:.1e} | "
            f"{r['batch_32_max_rel_diff']:.1e}{extra} | {r['maps_within_tolerance']}/{r['n']} | "
            f"{ties} | {r['build_seconds']:.2f} | {r['ort_seconds']:.2f} | "
            f"{r['torch_seconds']:.2f} |"
        )
    print()
    print("ResNet-50 (224x224) graph build from model.onnx bytes, seconds: "
          + ", ".join(f"{m} {s:.2f}" for m, s in builds.items()))  # fmt: skip
    cores = os.cpu_count()
    name = f"explanation_parity_cpu-{cores}cores_ort{ort.__version__}_torch{torch.__version__}"
    if args.quick:
        name += "_quick"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.json"
    result = {
        "machine": platform.machine(),
        "cores": cores,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "batch": batch,
        "integrated_gradients_steps": steps,
        "tolerance": PARITY_TOLERANCE,
        "occlusion_floor": OCCLUSION_FLOOR,
        "rows": rows,
        "resnet50_224_build_seconds": builds,
    }
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
