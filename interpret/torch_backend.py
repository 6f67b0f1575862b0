"""The PyTorch backend of the explanation-quality metrics (`cnnzoo.interpret.quality`): a model
and the methods of `cnnzoo.interpret.methods` as the numpy callables the metrics take.

- `model_callable`: images `[N, C, H, W]` float32 -> logits `[N, K]`; `onnx_model_callable`
  the same on ONNX Runtime (the model exported once), which the faithfulness metrics' many
  model calls run on where it can be used.
- `explainer`: (images, targets) -> maps `[N, H, W]`, a method's attribution summed over the
  input's channels, as `cnnzoo.interpret.explain` gives it. Any method of the table works:
  each is built as `Class(model)` (with `layer=` for the methods that take a layer, Grad-CAM's).
- `randomisation_stages`: the MPRT cascade: a copy of the model whose layers are re-initialised
  from the top down, one more per stage, each stage with an explainer per method.
- `explanation_quality`: all of the above for some images and methods, through
  `cnnzoo.interpret.quality.evaluate`.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnzoo.errors import InvalidInput
from cnnzoo.interpret.explain import takes_layer
from cnnzoo.interpret.methods import get_method
from cnnzoo.interpret.modules import get_layer, record_runs
from cnnzoo.interpret.quality.report import MethodQuality, evaluate
from cnnzoo.interpret.quality.sanity import Stages
from cnnzoo.interpret.quality.settings import Explainer, Model, QualitySettings
from cnnzoo.interpret.rules import left_as_found

log = logging.getLogger(__name__)

__all__ = [
    "explainer",
    "explainer_warnings",
    "explanation_quality",
    "method_maps",
    "model_callable",
    "onnx_model_callable",
    "randomisable",
    "randomisable_layers",
    "randomisation_stages",
    "randomise_layer",
    "takes_layer",
]


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def model_callable(model: nn.Module) -> Model:
    """`model` as images -> logits on numpy arrays (eval mode, no gradients, flags restored)."""
    device, dtype = _placement(model)

    def logits(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device=device, dtype=dtype)
        with left_as_found(model), torch.inference_mode():
            return model(x).float().cpu().numpy()

    return logits


def onnx_model_callable(model: nn.Module, images: np.ndarray) -> Model | None:
    """`model` exported to ONNX and run on ONNX Runtime, as `model_callable` (see
    `cnnzoo.interpret.quality.onnx_model`), or None where that cannot be used: a model on a GPU
    or not in float32 (PyTorch is fast there), a graph the exporter cannot write, or logits
    that differ from PyTorch's on `images[:8]` beyond float32 rounding (1e-4 of their largest).
    The reason is logged; the caller then uses `model_callable`.
    """
    from cnnzoo.interpret.quality.onnx_model import OnnxModel
    from cnnzoo.zoo.export import export_onnx

    device, dtype = _placement(model)
    if device.type != "cpu" or dtype != torch.float32:
        return None
    sample = np.ascontiguousarray(images[:8], dtype=np.float32)
    try:
        with tempfile.TemporaryDirectory() as folder, left_as_found(model):
            path = Path(folder) / "model.onnx"
            export_onnx(model, torch.from_numpy(sample[:1]), path)
            onnx_model = OnnxModel(path.read_bytes(), threads=torch.get_num_threads())
    except Exception as err:  # noqa: BLE001 - any exporter failure: PyTorch runs the metrics
        log.info("the quality metrics run the model on PyTorch: no ONNX export (%s)", err)
        return None
    expected = model_callable(model)(sample)
    difference = float(np.abs(onnx_model(sample) - expected).max())
    if difference > 1e-4 * max(1.0, float(np.abs(expected).max())):
        log.warning(
            "the quality metrics run the model on PyTorch: its ONNX export's logits differ by %.3g",
            difference,
        )
        return None
    return onnx_model


def _attributor(model: nn.Module, method: str, layer: str | None) -> Any:
    implementation = get_method(method).load()  # InvalidInput lists the methods
    if layer is None:
        return implementation(model)
    if not takes_layer(method):
        raise InvalidInput(f"method {method} takes no layer; only methods with a layer do")
    return implementation(model, layer=layer)


def explainer_warnings(model: nn.Module, method: str) -> tuple[str, ...]:
    """Why `method`'s maps of `model` cannot depend on the input, if they cannot (e.g. the
    deconvnet of a model without max-pooling)."""
    return tuple(get_method(method).load()(model).warnings())


def explainer(
    model: nn.Module, method: str, *, layer: str | None = None, batch_size: int = 64
) -> Explainer:
    """`method`'s maps of `model` as (images, targets) -> `[N, H, W]` float32, computed
    `batch_size` images at a time.

    Args:
        layer: the layer of the methods that take one (Grad-CAM's; default: theirs).
    """
    attributor = _attributor(model, method, layer)
    device, dtype = _placement(model)

    def explain(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        maps = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            t = torch.as_tensor(np.asarray(targets[start : start + batch_size]), dtype=torch.long)
            found = attributor.attribute(x.to(device=device, dtype=dtype), target=t.to(device))
            maps.append(found.detach().sum(dim=1).float().cpu().numpy())
        if not maps:
            return np.zeros((0, *images.shape[2:]), dtype=np.float32)
        return np.concatenate(maps)

    return explain


def method_maps(
    model: nn.Module,
    methods: Sequence[str],
    images: np.ndarray,
    targets: np.ndarray,
    *,
    layer: str | None = None,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Each method's maps of `images` for `targets` (`layer` for the methods that take one)."""
    return {
        m: explainer(model, m, layer=layer if takes_layer(m) else None, batch_size=batch_size)(
            images, targets
        )
        for m in methods
    }


def _reseeded(seed: int, position: int) -> int:
    """A seed of its own for the layer re-initialised at `position` of the cascade."""
    return int(np.random.SeedSequence((seed, position)).generate_state(1)[0])


def randomisable(model: nn.Module, layers: Sequence[str]) -> list[nn.Module]:
    """The modules called `layers`, each able to re-initialise itself.

    Raises:
        LayerNotFound: an unknown layer (lists the valid ones).
        InvalidInput: a layer without `reset_parameters`.
    """
    modules = [get_layer(model, name) for name in layers]
    for name, module in zip(layers, modules, strict=True):
        if not callable(getattr(module, "reset_parameters", None)):
            raise InvalidInput(
                f"layer {name!r} ({type(module).__name__}) has no reset_parameters(), so it "
                "cannot be randomised; pick layers with parameters (convolutions, linear layers, "
                "batch norm)"
            )
    return modules


def randomise_layer(module: nn.Module, seed: int, position: int) -> None:
    """Re-initialise `module` (`reset_parameters`) from a seed derived from `seed` and its
    `position` in the cascade, without touching the global random state."""
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(_reseeded(seed, position))
        module.reset_parameters()


def randomisation_stages(
    model: nn.Module,
    methods: Sequence[str],
    layers: Sequence[str],
    *,
    seed: int = 0,
    layer: str | None = None,
    batch_size: int = 64,
) -> Stages:
    """The MPRT cascade on a copy of `model` (the model itself is not touched): stage i has the
    first i + 1 of `layers` re-initialised with their own `reset_parameters`, each from a seed of
    its own derived from `seed` and its position (`randomise_layer`), so its random weights do
    not depend on the layers before it.

    Args:
        methods: the methods to explain each stage with.
        layers: modules with parameters, in the order they are randomised (top layer first).
        layer: the layer of the methods that take one.

    Raises:
        LayerNotFound: an unknown layer (lists the valid ones).
        InvalidInput: a layer without `reset_parameters`.
    """
    work = copy.deepcopy(model).eval()
    modules = randomisable(work, layers)

    def cascade() -> Iterator[tuple[str, Mapping[str, Explainer]]]:
        for position, (name, module) in enumerate(zip(layers, modules, strict=True)):
            randomise_layer(module, seed, position)
            yield (
                name,
                {
                    m: explainer(
                        work, m, layer=layer if takes_layer(m) else None, batch_size=batch_size
                    )
                    for m in methods
                },
            )

    return cascade()


def randomisable_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The convolutions and linear layers that run once per forward pass, top (output) first:
    the default MPRT cascade."""
    runs = record_runs(model, x[:1])
    modules = dict(model.named_modules())
    return [
        run.name
        for run in reversed(runs)
        if run.calls == 1 and isinstance(modules[run.name], (nn.Conv2d, nn.Linear))
    ]


def explanation_quality(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    methods: Sequence[str],
    *,
    targets: Sequence[int] | np.ndarray | None = None,
    settings: QualitySettings | None = None,
    layer: str | None = None,
    randomise: Sequence[str] | None = None,
    sanity: int | None = None,
    baselines: Sequence[str] = ("random", "edges"),
    ids: Sequence[int] | np.ndarray | None = None,
    forward: Model | None = None,
) -> dict[str, MethodQuality]:
    """Every quality figure of `methods` on `images` of `model` (see
    `cnnzoo.interpret.quality.evaluate`).

    Args:
        images: preprocessed images `[N, C, H, W]`.
        targets: the classes to explain (default: the model's predictions).
        settings: see `QualitySettings`.
        layer: Grad-CAM's layer (default: its own choice).
        randomise: the MPRT cascade's layers, top first (default: `randomisable_layers`);
            an empty list skips MPRT.
        sanity: how many of the images the randomisation checks use (default: all).
        baselines: the baselines to add.
        ids: a stable id per image (default: its position).
        forward: the model calls of the faithfulness metrics (default: `model` on PyTorch;
            e.g. its ONNX graph on ONNX Runtime, `onnx_model_callable`).
    """
    settings = settings or QualitySettings()
    x = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else images
    x = np.ascontiguousarray(x, dtype=np.float32)
    forward = forward or model_callable(model)
    if targets is None:
        targets = np.concatenate(
            [
                forward(x[i : i + settings.batch_size]).argmax(axis=1)
                for i in range(0, len(x), settings.batch_size)
            ]
        )
    targets = np.asarray(targets, dtype=np.int64)
    maps = method_maps(model, methods, x, targets, layer=layer)
    if randomise is None:
        randomise = randomisable_layers(model, torch.from_numpy(x[:1]))
    stages = (
        randomisation_stages(model, methods, randomise, seed=settings.seed, layer=layer)
        if randomise
        else None
    )
    explainers = {m: explainer(model, m, layer=layer if takes_layer(m) else None) for m in methods}
    return evaluate(
        forward,
        x,
        targets,
        maps,
        settings,
        explainers=explainers,
        stages=stages,
        sanity=sanity,
        baselines=baselines,
        ids=ids,
    )
