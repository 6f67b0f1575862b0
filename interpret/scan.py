"""One pass over a dataset that keeps the top-k activations of chosen channels of chosen layers.

Batches are fixed ranges of the (subset of the) dataset: batch b always holds the same images, so
every image is computed in the same batch whether the scan runs in one process, resumes after a
kill or is split across ranks, and the merged tables are bit-identical.

`scan_topk` is the pass itself; `resumable_scan` runs it as a job does: this process's share of
the batches (batch b belongs to shard b mod N), checkpointed every tenth of that share so a
killed run resumes where it stopped, then every share's tables merged and stored once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnnzoo.errors import InvalidInput
from cnnzoo.fileio import atomic_write_bytes
from cnnzoo.interpret.forward import forward_to
from cnnzoo.interpret.rules import left_as_found
from cnnzoo.interpret.topk import TopK, channel_maxima

__all__ = ["Shards", "batch_ranges", "iterate_batches", "resumable_scan", "scan_topk"]


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


class Shards(Protocol):
    """This process among those sharing a scan (`cnnzoo.interpret.jobs.distributed.Ranks`)."""

    rank: int
    world: int

    @property
    def is_main(self) -> bool: ...

    def mine(self, index: int) -> bool: ...

    def all_gather(self, obj: Any) -> list[Any]: ...

    def barrier(self) -> None: ...


def _flat(tables: Mapping[str, TopK]) -> dict[str, torch.Tensor]:
    """Every layer's table as flat tensors for one safetensors file (`<layer>/values`, ...),
    serialised in memory and written by Python, so a full disk is an OSError like any other."""
    return {k: v for name, top in tables.items() for k, v in top.to_tensors(f"{name}/").items()}


def _load_tables(path: Path, layers: Iterable[str]) -> dict[str, TopK]:
    tensors = load_file(str(path))
    return {name: TopK.from_tensors(tensors, f"{name}/") for name in layers}


def resumable_scan(
    model: nn.Module,
    layers: Mapping[str, Sequence[int]],
    dataset: Any,
    indices: Sequence[int],
    folder: Path,
    shards: Shards,
    *,
    k: int,
    batch_size: int,
    num_workers: int = 0,
    checkpoints: int = 10,
    progress: str | None = None,
) -> dict[str, TopK]:
    """The merged top-k tables of `indices`: read from `folder/topk.safetensors` when a finished
    scan left it there, else by scanning (resuming) this shard's batches and merging every
    shard's tables.

    Args:
        model, layers, k: as for `scan_topk`.
        dataset: yields (preprocessed image, label) by index.
        indices: the dataset indices to scan, cut into batches of `batch_size`.
        folder: where the checkpoint (`scan-rank<r>-of-<n>.safetensors`) and the merged tables
            live.
        shards: this process's share (every process calls this with the same arguments).
        checkpoints: how often per share the partial tables are saved.
        progress: the progress bar's label; None hides it.
    """
    final = folder / "topk.safetensors"
    if final.is_file():
        return _load_tables(final, layers)
    batches = batch_ranges(indices, batch_size)
    mine = [b for b in range(len(batches)) if shards.mine(b)]
    checkpoint = folder / f"scan-rank{shards.rank}-of-{shards.world}.safetensors"
    tops, done = None, 0
    if checkpoint.is_file():
        with safe_open(str(checkpoint), framework="pt") as handle:
            done = int(handle.metadata()["done"])
        tops = _load_tables(checkpoint, layers)
    every = max(1, math.ceil(len(mine) / checkpoints))
    bar = tqdm(
        total=len(mine), initial=done, desc=progress, disable=progress is None or None, leave=False
    )
    counter = {"done": done}

    def checkpoint_after(tables: dict[str, TopK]) -> None:
        counter["done"] += 1
        bar.update(1)
        if counter["done"] % every == 0 or counter["done"] == len(mine):
            stamp = {"done": str(counter["done"])}
            atomic_write_bytes(checkpoint, save(_flat(tables), metadata=stamp))

    todo = [batches[b] for b in mine[done:]]
    tops = scan_topk(
        model,
        layers,
        iterate_batches(dataset, todo, num_workers=num_workers),
        k=k,
        tops=tops,
        after_batch=checkpoint_after,
    )
    bar.close()
    shares = shards.all_gather(tops)
    merged = shares[0]
    for share in shares[1:]:
        merged = {name: merged[name].merge(share[name]) for name in layers}
    if shards.is_main:
        atomic_write_bytes(final, save(_flat(merged)))
    shards.barrier()
    return merged
