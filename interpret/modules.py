"""A model's modules by the names job files and `--layer` use, and how each runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnzoo.errors import LayerNotFound
from cnnzoo.interpret.rules import left_as_found

__all__ = ["ModuleRun", "get_layer", "layer_names", "record_runs"]


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


def record_runs(model: nn.Module, x: torch.Tensor) -> list[ModuleRun]:
    """Run `model` on `x` once (eval mode, no gradients, flags restored) and report every named
    module that ran, in the order its last call finished (a container after its children)."""
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
    finally:
        for handle in handles:
            handle.remove()
    order = sorted(finished, key=finished.__getitem__)
    return [ModuleRun(name, calls[name], shapes[name]) for name in order]
