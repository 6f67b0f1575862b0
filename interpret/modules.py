"""A model's modules by the names job files and `--layer` use, and how each runs.

A module that runs more than once per forward pass (torchvision's ResNet calls each block's
`relu` twice) has no single output to capture, project or weigh: every entry point that takes a
layer name refuses one with `require_single_run` instead of silently using its first call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnzoo.errors import LayerNotFound, UnsupportedModel
from cnnzoo.interpret.rules import left_as_found

__all__ = ["ModuleRun", "get_layer", "layer_names", "record_runs", "require_single_run"]


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule, in definition order (the root, named "", excluded)."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`; `LayerNotFound` lists the valid names otherwise."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise LayerNotFound(
            f"unknown layer {name!r}; valid layers: {', '.join(layer_names(model))}"
        )
    return modules[name]


@dataclass(frozen=True)
class ModuleRun:
    """How one module ran in a forward pass.

    Attributes:
        name: its qualified name.
        calls: how often it ran.
        output_shape: the shape of its last call's output without the batch dimension; None
            when that output is not one tensor.
    """

    name: str
    calls: int
    output_shape: tuple[int, ...] | None


def record_runs(model: nn.Module, x: torch.Tensor, partial: bool = False) -> list[ModuleRun]:
    """Run `model` on `x` once (eval mode, no gradients, flags restored) and report every named
    module that ran, in the order its last call finished (a container after its children).

    Args:
        partial: when the forward pass raises, report what ran until then instead (for models
            that only run as far as some layer, e.g. on an input the head does not fit).
    """
    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}
    finished: dict[str, int] = {}  # name -> when its last call finished

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
            finished[name] = sum(calls.values())  # hooks run in order of finishing

        return hook

    handles = [
        module.register_forward_hook(make_hook(name))
        for name, module in model.named_modules()
        if name
    ]
    try:
        with left_as_found(model), torch.no_grad():
            model(x)
    except Exception:
        if not partial:
            raise
    finally:
        for handle in handles:
            handle.remove()
    order = sorted(finished, key=finished.__getitem__)
    return [ModuleRun(name, calls[name], shapes[name]) for name in order]


# Per model: (its modules' identities, the input shape, calls per module name) of the last count.
_CALLS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], tuple[int, ...], dict]] = (
    weakref.WeakKeyDictionary()
)


def require_single_run(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> None:
    """Refuse any of `layers` that runs more than once when `model` sees inputs shaped like `x`.

    The calls are counted with one forward pass of one image (`record_runs`) the first time a
    model (or an input shape) is seen, and remembered while the model's modules stay the same.
    Only what runs before the model fails counts: callers that stop at a layer (`forward_to`)
    need not be able to run the whole model on `x`.

    Raises:
        LayerNotFound: an unknown layer name (lists the valid names).
        UnsupportedModel: a layer that runs more than once.
    """
    for name in layers:
        get_layer(model, name)
    signature = tuple(id(module) for module in model.modules())
    shape = tuple(x.shape[1:])
    cached = _CALLS.get(model)
    if cached is None or cached[0] != signature or cached[1] != shape:
        counts = {run.name: run.calls for run in record_runs(model, x[:1].detach(), partial=True)}
        _CALLS[model] = cached = (signature, shape, counts)
    for name in layers:
        calls = cached[2].get(name, 0)
        if calls > 1:
            raise UnsupportedModel(
                f"layer {name!r} runs {calls} times per forward pass, so it has no single output; "
                "pick a module that runs once (e.g. the convolution before a reused ReLU, or the "
                "block that contains it)"
            )
