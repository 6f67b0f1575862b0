"""Run a model only as far as the layers one needs, capturing their outputs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cnnzoo.errors import UnsupportedModel
from cnnzoo.interpret.modules import require_single_run

__all__ = ["forward_to"]


class _Stop(Exception):
    """Raised by the last capture hook: nothing after it is needed."""


def forward_to(
    model: nn.Module,
    layers: Sequence[str],
    x: torch.Tensor,
    on_output: Callable[[str, torch.Tensor], Any] | None = None,
) -> dict[str, Any]:
    """Forward `x` until every layer in `layers` has run once; return what `on_output` made of
    each layer's output (the output itself when `on_output` is None).

    `on_output` runs inside the hook, before any later in-place operation (such as an in-place
    ReLU after a convolution) can overwrite the output.

    Raises:
        LayerNotFound: unknown layer name.
        UnsupportedModel: a layer that runs more than once per forward pass (see
            `cnnzoo.interpret.modules.require_single_run`), or never.
    """
    results: dict[str, Any] = {}
    handles = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if name in results:
                raise UnsupportedModel(
                    f"layer {name!r} runs more than once per forward pass; pick a module that "
                    "runs once (e.g. the convolution before a reused ReLU)"
                )
            if not isinstance(output, torch.Tensor):
                raise UnsupportedModel(f"layer {name!r} does not return one tensor")
            results[name] = on_output(name, output) if on_output is not None else output
            if len(results) == len(wanted):
                raise _Stop

        return hook

    wanted = list(dict.fromkeys(layers))
    require_single_run(model, wanted, x)  # also LayerNotFound, with the valid names
    modules = dict(model.named_modules())
    try:
        for name in wanted:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        with contextlib.suppress(_Stop):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in wanted if name not in results]
    if missing:
        raise UnsupportedModel(f"layers {missing} did not run in the forward pass")
    return results
