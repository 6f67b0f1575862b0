"""One pass over a dataset that keeps the top-k activations of chosen channels of chosen layers.

Batches are fixed ranges of the (subset of the) dataset: batch b always holds the same images, so
every image is computed in the same batch whether the scan runs in one process, resumes after a
kill or is split across ranks, and the merged tables are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnzoo.errors import InvalidInput
from cnnzoo.interpret.forward import forward_to
from cnnzoo.interpret.rules import left_as_found
from cnnzoo.interpret.topk import TopK, channel_maxima

__all__ = ["batch_ranges", "iterate_batches", "scan_topk"]


def batch_ranges(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    """Split dataset indices into consecutive batches of `batch_size` (the last may be short)."""
    return [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]


def iterate_batches(
    dataset: Any, batches: Sequence[Sequence[int]], num_workers: int = 0
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(images, dataset indices) for each batch of indices, in the order given."""
    loader = DataLoader(dataset, batch_sampler=[list(b) for b in batches], num_workers=num_workers)
    for batch, (images, _labels) in zip(batches, loader, strict=True):
        yield images, torch.tensor(list(batch), dtype=torch.int64)


def scan_topk(
    model: nn.Module,
    layers: Mapping[str, Sequence[int]],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    k: int = 9,
    tops: dict[str, TopK] | None = None,
    after_batch: Callable[[dict[str, TopK]], None] | None = None,
) -> dict[str, TopK]:
    """Stream (images, dataset indices) batches and keep per channel the top-k entries.

    Args:
        model: the network (run in eval mode; flags restored afterwards).
        layers: layer name -> the channels to track (row c of its table is channel layers[name][c]).
        batches: (images `[B, C, H, W]`, dataset indices `[B]`).
        k: entries per channel.
        tops: partial tables to continue from (resuming); new ones otherwise.
        after_batch: called with the tables after each batch (checkpointing).

    Returns:
        layer name -> `TopK` with one row per tracked channel.

    Raises:
        InvalidInput: a channel outside its layer (the message names the layer's width).
        UnsupportedModel: a layer that runs more than once per forward pass.
    """
    tops = (
        tops if tops is not None else {name: TopK.empty(len(ch), k) for name, ch in layers.items()}
    )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    selected = {
        name: torch.tensor(list(ch), dtype=torch.int64, device=device)
        for name, ch in layers.items()
    }

    everything = {name: list(ch) == list(range(len(ch))) for name, ch in layers.items()}
    for name, channels in layers.items():
        if not channels or min(channels) < 0:
            raise InvalidInput(f"layer {name!r}: channels must be a non-empty list of indices >= 0")
    highest = {name: max(ch) for name, ch in layers.items()}

    def reduce(name: str, output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if output.dim() < 2 or highest[name] >= output.shape[1]:
            width = output.shape[1] if output.dim() >= 2 else 0
            raise InvalidInput(
                f"channel {highest[name]} out of range; layer {name!r} has {width} channels "
                f"(0 to {width - 1})"
            )
        if not (everything[name] and output.shape[1] == len(layers[name])):
            output = output.index_select(1, selected[name])
        if output.dim() != 4 or output.shape[-2:] == (1, 1):
            return channel_maxima(output)
        # Positions only for images that can enter some table (argmax is the costly part).
        flat = output.flatten(2)
        values = flat.amax(dim=2).double()
        ys = torch.zeros(values.shape, dtype=torch.int64, device=values.device)
        xs = torch.zeros_like(ys)
        rows = (values >= tops[name].values[:, -1].to(values.device)).any(dim=1).nonzero().flatten()
        if len(rows):
            where = flat[rows].argmax(dim=2)  # first position on ties, like channel_maxima
            ys[rows] = where // output.shape[-1]
            xs[rows] = where % output.shape[-1]
        return values, ys, xs

    with left_as_found(model), torch.inference_mode():
        for images, indices in batches:
            stats = forward_to(model, list(layers), images.to(device=device, dtype=dtype), reduce)
            for name, (values, ys, xs) in stats.items():
                tops[name].update(values, indices, ys, xs)
            if after_batch is not None:
                after_batch(tops)
    return tops
