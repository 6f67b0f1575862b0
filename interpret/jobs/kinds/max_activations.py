"""`max-activations`: Zeiler & Fergus (2014) Fig. 2.

For each chosen layer and channel, one pass over the dataset keeps the top-k activations (value,
image, position); each is projected back to pixels (deconvnet by default) and shown beside the
image patch under its receptive field, 3x3 per channel.

Options (job file):
    layers      layer names (default: every convolution)
    channels    how many channels, spread evenly (default 8), a list of them, or a table of
                either per layer ({"features.c1" = 6, "features.c3" = [0, 5]})
    top_k       entries per channel (default 9)
    projection  gradient | deconvnet | guided-backprop (default deconvnet)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from cnnzoo.fileio import atomic_path
from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.context import TILE, JobContext, unit_record
from cnnzoo.interpret.jobs.options import (
    Options,
    channel_choice,
    name_list,
    option,
    positive,
    projection_option,
)
from cnnzoo.interpret.jobs.world import World
from cnnzoo.interpret.projection import Unit, project_units
from cnnzoo.interpret.render import crop_padded, projection_rgb, side_by_side, tile_grid, upscale
from cnnzoo.interpret.rules import Rule
from cnnzoo.interpret.scan import batch_ranges, iterate_batches, scan_topk
from cnnzoo.interpret.topk import Entry, TopK

__all__ = ["MaxActivations", "MaxActivationsOptions"]

_CHECKPOINTS = 10  # scan checkpoints per run
_CHANNELS = 8  # channels per layer unless the job says otherwise


@dataclass(frozen=True)
class MaxActivationsOptions(Options):
    layers: tuple[str, ...] | None = option(None, name_list)
    channels: Any = option(_CHANNELS, channel_choice)  # resolved: {layer: (channel, ...)}
    top_k: int = option(9, positive)
    projection: str = projection_option()


class MaxActivations(Analysis[MaxActivationsOptions]):
    kind = "max-activations"
    title = "Maximal activations (Zeiler & Fergus 2014, Fig. 2)"
    Options = MaxActivationsOptions

    def resolve_options(self, world: World) -> MaxActivationsOptions:
        opts = self.options
        table = world.channel_table(
            self.where, opts.layers, opts.channels, world.of_kind("Conv2d"), _CHANNELS
        )
        return replace(opts, layers=tuple(table), channels=table)

    def run(self, ctx: JobContext) -> dict[str, Any]:
        opts = self.options
        layers: dict[str, tuple[int, ...]] = opts.channels
        k = opts.top_k
        tops = self._scan(ctx, layers, k)
        rule = Rule(opts.projection)

        def render(layer: str) -> dict[str, Any]:
            channels = layers[layer]
            top = tops[layer]
            table = [top.entries(row) for row in range(len(channels))]
            wanted = sorted({e.image for entries in table for e in entries})
            images, labels = ctx.images(wanted)
            row_of = {index: row for row, index in enumerate(wanted)}
            units = [
                Unit(row_of[e.image], channel, e.y, e.x)
                for channel, entries in zip(channels, table, strict=True)
                for e in entries
            ]
            maps = (
                project_units(ctx.model, layer, images, units, rule=rule)
                if units
                else torch.empty(0)
            )
            files, data, figures = [], {}, []
            position = 0
            for channel, entries in zip(channels, table, strict=True):
                projections = [maps[position + i] for i in range(len(entries))]
                position += len(entries)
                pictures = [images[row_of[e.image]] for e in entries]
                figure = _channel_figure(ctx, layer, projections, pictures, entries, k)
                figures.append(figure)
                data[str(channel)] = [
                    unit_record(
                        e,
                        ctx.label_name(labels[row_of[e.image]]),
                        ctx.world.unit_box(layer, e.y, e.x),
                    )
                    for e in entries
                ]
                values = ", ".join(f"{e.value:.3g}" for e in entries)
                files.append(
                    ctx.write_png(
                        figure,
                        f"{self.id}/{layer}/channel_{channel:04d}.png",
                        f"{layer} channel {channel}: top-{len(entries)} {opts.projection} "
                        f"projections (left) and image patches (right); activations {values}",
                    )
                )
            width = max(f.shape[-1] for f in figures)
            height = max(f.shape[-2] for f in figures)
            padded = [
                torch.nn.functional.pad(
                    f, (0, width - f.shape[-1], 0, height - f.shape[-2]), value=1.0
                )
                for f in figures
            ]
            overview = tile_grid(padded, nrow=min(4, len(padded)), padding=10)
            files.insert(
                0,
                ctx.write_png(
                    overview,
                    f"{self.id}/{layer}.png",
                    f"{layer}: channels {', '.join(map(str, channels))} "
                    "(each: projections left, patches right)",
                ),
            )
            return {"files": files, "data": {"layer": layer, "channels": data}}

        records = ctx.run_parts(
            self.id, [f"layer-{name}" for name in layers], lambda key: render(key[len("layer-") :])
        )
        tables = {r["data"]["layer"]: r["data"]["channels"] for r in records.values()}
        return self.section(ctx, records, tables=tables)

    def _scan(self, ctx: JobContext, layers: dict[str, tuple[int, ...]], k: int) -> dict[str, TopK]:
        """The merged top-k tables: from the finished file, or by (resuming) this rank's share
        of the scan and merging every rank's share."""
        folder = ctx.state_dir / self.id
        final = folder / "topk.safetensors"
        if final.is_file():
            tensors = load_file(str(final))
            return {name: TopK.from_tensors(tensors, f"{name}/") for name in layers}
        start = time.perf_counter()
        ranks = ctx.ranks
        batches = batch_ranges(ctx.indices, ctx.data.batch_size)
        mine = [b for b in range(len(batches)) if ranks.mine(b)]
        checkpoint = folder / f"scan-rank{ranks.rank}-of-{ranks.world}.safetensors"
        tops, done = None, 0
        if checkpoint.is_file():
            with safe_open(str(checkpoint), framework="pt") as handle:
                done = int(handle.metadata()["done"])
            tensors = load_file(str(checkpoint))
            tops = {name: TopK.from_tensors(tensors, f"{name}/") for name in layers}
        every = max(1, math.ceil(len(mine) / _CHECKPOINTS))
        progress = tqdm(
            total=len(mine),
            initial=done,
            desc=f"{self.id} scan",
            disable=not ctx.progress or None,
            leave=False,
        )
        counter = {"done": done}

        def save(tables: dict[str, TopK]) -> None:
            counter["done"] += 1
            progress.update(1)
            if counter["done"] % every == 0 or counter["done"] == len(mine):
                with atomic_path(checkpoint) as tmp:
                    save_file(_flat(tables), str(tmp), metadata={"done": str(counter["done"])})

        todo = [batches[b] for b in mine[done:]]
        tops = scan_topk(
            ctx.model,
            layers,
            iterate_batches(ctx.world.dataset, todo, num_workers=ctx.data.num_workers),
            k=k,
            tops=tops,
            after_batch=save,
        )
        progress.close()
        shares = ranks.all_gather(tops)
        merged = shares[0]
        for share in shares[1:]:
            merged = {name: merged[name].merge(share[name]) for name in layers}
        if ranks.is_main:
            with atomic_path(final) as tmp:
                save_file(_flat(merged), str(tmp))
        ranks.barrier()
        ctx.timings.setdefault(self.id, {})["scan_seconds"] = round(time.perf_counter() - start, 3)
        return merged


def _flat(tables: dict[str, TopK]) -> dict[str, torch.Tensor]:
    """Every layer's table as flat tensors for one safetensors file (`<layer>/values`, ...)."""
    return {k: v for name, top in tables.items() for k, v in top.to_tensors(f"{name}/").items()}


def _channel_figure(
    ctx: JobContext,
    layer: str,
    projections: list[torch.Tensor],
    images: list[torch.Tensor],
    entries: list[Entry],
    k: int,
) -> torch.Tensor:
    """3x3 (k) projections beside the matching receptive-field patches."""
    proj_tiles, patch_tiles = [], []
    for projection, image, entry in zip(projections, images, entries, strict=True):
        box = ctx.world.unit_box(layer, entry.y, entry.x)
        proj_tiles.append(upscale(projection_rgb(crop_padded(projection.cpu(), box)), TILE))
        patch_tiles.append(upscale(crop_padded(ctx.display(image), box), TILE))
    size = proj_tiles[0].shape[-1] if proj_tiles else TILE
    while len(proj_tiles) < k:
        proj_tiles.append(torch.full((3, size, size), 0.5))
        patch_tiles.append(torch.full((3, size, size), 0.5))
    nrow = math.ceil(math.sqrt(k))
    return side_by_side([tile_grid(proj_tiles, nrow), tile_grid(patch_tiles, nrow)], gap=6)
