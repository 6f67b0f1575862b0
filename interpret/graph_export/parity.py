"""Explanation graphs against the PyTorch implementation (`cnnzoo.interpret`, Captum), for the
manifests `cnnzoo export` writes: the same images through both, the largest difference per map
relative to the map's largest |value|.

A ReLU pre-activation (or a max-pooling window's runner-up) within float32 rounding of zero
(of the maximum) can come out on either side in two runtimes that round differently (ONNX
Runtime's convolutions are not PyTorch's; the exporter folds batch norm into them), and the map
then changes by that unit's whole contribution. The figures say how many maps agree to 1e-5;
integrated gradients, which evaluates 50 scaled copies of each image, meets such ties most.
Occlusion maps are differences of probabilities: where a confident model's drops are tiny, the
comparison also allows `OCCLUSION_FLOOR` in absolute terms.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from cnnzoo.errors import DatasetNotFound, InvalidInput, NotFound
from cnnzoo.interpret.forward import forward_to
from cnnzoo.interpret.gradcam import GradCam, GuidedGradCam
from cnnzoo.interpret.gradient_methods import IntegratedGradients
from cnnzoo.interpret.graph_export.writer import Parity
from cnnzoo.interpret.graphs.methods import get_graph_method
from cnnzoo.interpret.graphs.selfcheck import default_feeds, session
from cnnzoo.interpret.methods import get_method
from cnnzoo.interpret.occlusion import OcclusionSensitivity
from cnnzoo.interpret.projection import Unit, project_units
from cnnzoo.interpret.rules import Rule
from cnnzoo.zoo.registry import get_entry
from cnnzoo.zoo.repository import ModelRepository

__all__ = [
    "OCCLUSION_FLOOR",
    "PARITY_IMAGES",
    "PARITY_TOLERANCE",
    "map_differences",
    "pytorch_maps",
    "pytorch_parity",
]

PARITY_IMAGES = 4
PARITY_TOLERANCE = 1e-5  # per map: max |graph - PyTorch| <= tolerance * max |PyTorch| (+ floor)
# Occlusion maps are differences of softmax probabilities, which float32 logits fix to ~1e-7:
# a confident model's small drops are compared to that absolute floor too.
OCCLUSION_FLOOR = 2e-7
_RULES = {"deconvnet": Rule.DECONVNET, "guided-backprop": Rule.GUIDED, "gradient": Rule.GRADIENT}


def map_differences(got: np.ndarray, expected: np.ndarray) -> list[float]:
    """Per map: max |got - expected| / max |expected| (the absolute difference where the
    expected map is all zero)."""
    out = []
    for a, r in zip(got, expected, strict=True):
        peak = float(np.abs(r).max())
        out.append(float(np.abs(a - r).max()) / (peak if peak > 0 else 1.0))
    return out


def pytorch_parity(
    repository: str | Path, model: str, *, data_dir: Path | None = None
) -> Callable[[int], Parity]:
    """For a version of `model` (exported by `cnnzoo export`, so its PyTorch model can be
    rebuilt), a function (graph, method) -> parity figures."""

    def for_version(version: int) -> Parity:
        repo = ModelRepository(repository)
        manifest = repo.verify(model, version)
        net = repo.torch_model(model, version, manifest=manifest)
        preprocess = repo.preprocess(model)
        images, kind = _images(manifest.zoo_entry, preprocess, data_dir)
        x = torch.stack([preprocess.torch_transform()(image) for image in images])
        pixels = np.stack([preprocess.pixels(image) for image in images])
        return functools.partial(_parity_figures, net, x, pixels, kind)

    return for_version


def _parity_figures(
    net: torch.nn.Module,
    x: torch.Tensor,
    pixels: np.ndarray,
    kind: str,
    graph: onnx.ModelProto,
    method: str,
) -> dict[str, Any]:
    """An explanation graph's maps of `x` (or its `pixels`, for a uint8 graph) against the
    PyTorch implementation's: the manifest's parity figures."""
    image = graph.graph.input[0]
    integer = image.type.tensor_type.elem_type != onnx.TensorProto.FLOAT
    feeds = default_feeds(graph, pixels if integer else x.numpy(), image.name)
    facts = {e.key: e.value for e in graph.metadata_props}
    if get_graph_method(method).kind == "activations":
        return _activation_figures(net, x, graph, feeds, kind)
    if get_graph_method(method).kind == "unit":
        layers = json.loads(facts["layers"])
        default = next(e for e in layers if e["name"] == facts["default_layer"])
        feeds["channel"] = (np.arange(len(x)) % default["shape"][0]).reshape(-1, 1)
    names = [o.name for o in graph.graph.output]
    outputs = dict(zip(names, session(graph).run(None, feeds), strict=True))
    channels = feeds["channel"][:, 0] if "channel" in feeds else None
    expected = pytorch_maps(net, x, method, facts, outputs, channels=channels)
    got = outputs["attribution"]
    floor = OCCLUSION_FLOOR if method == "occlusion" else 0.0
    within = [
        float(np.abs(a - r).max()) <= PARITY_TOLERANCE * float(np.abs(r).max()) + floor
        for a, r in zip(got, expected, strict=True)
    ]
    return {
        "reference": "PyTorch (cnnzoo.interpret, Captum), fp32",
        "n": len(x),
        "inputs": kind,
        "max_rel_diff": max(map_differences(got, expected)),
        "max_abs_diff": float(np.abs(got - expected).max()),
        "maps_within_tolerance": sum(within),
        "tolerance": PARITY_TOLERANCE,
        "abs_floor": floor,
    }


def _activation_figures(
    net: torch.nn.Module, x: torch.Tensor, graph: onnx.ModelProto, feeds: dict, kind: str
) -> dict[str, Any]:
    """An activations graph's layer outputs against PyTorch's forward hooks on the same
    modules: the largest difference relative to each layer's largest |value|."""
    entries = json.loads({e.key: e.value for e in graph.metadata_props}["activations"])
    names = [o.name for o in graph.graph.output]
    outputs = dict(zip(names, session(graph).run(None, feeds), strict=True))
    with torch.no_grad():
        expected = forward_to(net, [e["name"] for e in entries], x, lambda _, t: t.clone())
    differences = [
        max(map_differences(outputs[e["output"]], expected[e["name"]].float().numpy()))
        for e in entries
    ]
    return {
        "reference": "PyTorch forward hooks (cnnzoo.interpret.forward), fp32",
        "n": len(x),
        "inputs": kind,
        "layers": len(entries),
        "max_rel_diff": max(differences),
        "layers_within_tolerance": sum(d <= PARITY_TOLERANCE for d in differences),
        "tolerance": PARITY_TOLERANCE,
    }


def pytorch_maps(
    net: torch.nn.Module,
    x: torch.Tensor,
    method: str,
    facts: dict[str, str],
    outputs: dict[str, np.ndarray],
    *,
    layer: str | None = None,
    channels: np.ndarray | None = None,
) -> np.ndarray:
    """What the PyTorch implementation gives for an explanation graph's request: the graph's
    `target_used` (class methods) or `unit_position` with `channels` (unit methods), `layer`
    (default: the graph's `default_layer`), and the graph's settings (steps, window, stride)."""
    spec = get_graph_method(method)
    layer = layer or facts.get("default_layer")
    if spec.kind == "unit":
        assert channels is not None and layer
        position = outputs["unit_position"]
        units = [
            Unit(i, int(channels[i]), int(position[i, 0]), int(position[i, 1]))
            for i in range(len(x))
        ]
        return project_units(net, layer, x, units, _RULES[spec.rule or ""]).numpy()
    targets = torch.from_numpy(outputs["target_used"][:, 0])
    if method == "occlusion":
        occlusion = OcclusionSensitivity(
            net, window=int(facts["window"]), stride=int(facts["stride"])
        )
        maps = [occlusion.attribute(x[i : i + 1], target=int(targets[i])) for i in range(len(x))]
        return torch.cat(maps).numpy()
    if method in ("grad-cam", "guided-grad-cam"):
        cam = GradCam if method == "grad-cam" else GuidedGradCam
        return cam(net, layer).attribute(x, target=targets).numpy()
    if method == "integrated-gradients":
        return IntegratedGradients(net, steps=int(facts["steps"])).attribute(x, targets).numpy()
    return get_method(method).load()(net).attribute(x, target=targets).numpy()


def _images(entry_name: str | None, preprocess: Any, data_dir: Path | None) -> tuple[list, str]:
    """Test images of the model's dataset where it is here, else seeded random ones."""
    from PIL import Image

    if entry_name:
        try:
            data = get_entry(entry_name).open_dataset("test", data_dir=data_dir, transform=_as_is)
            if len(data) >= PARITY_IMAGES:
                return [data[i][0] for i in range(PARITY_IMAGES)], "dataset"
        except (DatasetNotFound, NotFound, InvalidInput):
            pass
    rng = np.random.default_rng(0)
    height, width = preprocess.input_size
    shape = (height, width) if preprocess.colour == "L" else (height, width, 3)
    images = [
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(PARITY_IMAGES)
    ]
    return images, "random"


def _as_is(image: Any) -> Any:
    return image
