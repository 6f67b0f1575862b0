"""`max-activations`: Zeiler & Fergus (2014) Fig. 2.

For each chosen layer and channel, one pass over the dataset keeps the top-k activations (value,
image, position); each is projected back to pixels (deconvnet by default) and shown beside the
image patch under its receptive field, 3x3 per channel.

Options (job file):
    layers      layer names (default: every convolution)
    channels    how many channels, spread evenly (default 8), a list of them, or a table of
                either per layer ({"features.c1" = 6, "features.c3" = [0, 5]})
    top_k       entries per channel (default 9; at most the job's images and 256)
    projection  gradient | deconvnet | guided-backprop (default deconvnet)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from tqdm import tqdm

from cnnzoo.fileio import atomic_write_bytes
from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.context import SHOW, TILE, JobContext, unit_record
from cnnzoo.interpret.jobs.limits import MAX_TILES, at_most, top_k_limit
from cnnzoo.interpret.jobs.options import (
    Options,
    channel_choice,
    name_list,
    option,
    positive,
    projection_option,
)
from cnnzoo.interpret.jobs.site import (
    INDEX,
    Page,
    analysis_page,
    by_channel,
    channel_page,
    layer_page,
)
from cnnzoo.interpret.jobs.world import World
from cnnzoo.interpret.projection import Unit, project_units
from cnnzoo.interpret.render import (
    boxed,
    crop_padded,
    projection_rgb,
    side_by_side,
    tile_grid,
    upscale,
)
from cnnzoo.interpret.rules import Rule, input_independence
from cnnzoo.interpret.scan import batch_ranges, iterate_batches, scan_topk
from cnnzoo.interpret.topk import TopK

__all__ = ["MaxActivations", "MaxActivationsOptions"]

_CHECKPOINTS = 10  # scan checkpoints per run
_CHANNELS = 8  # channels per layer unless the job says otherwise
_TOP_K = 9  # the paper's 3x3


@dataclass(frozen=True)
class MaxActivationsOptions(Options):
    layers: tuple[str, ...] | None = option(None, name_list)
    channels: Any = option(_CHANNELS, channel_choice)  # resolved: {layer: (channel, ...)}
    top_k: int | None = option(None, positive)  # None: 9, or every image when there are fewer
    projection: str = projection_option()


class MaxActivations(Analysis[MaxActivationsOptions]):
    kind = "max-activations"
    title = "Maximal activations (Zeiler & Fergus 2014, Fig. 2)"
    Options = MaxActivationsOptions
    legends = ("projection",)

    def resolve_options(self, world: World) -> MaxActivationsOptions:
        opts = self.options
        table = world.channel_table(
            self.where, opts.layers, opts.channels, world.of_kind("Conv2d"), _CHANNELS
        )
        limit, why = top_k_limit(world.images)
        top_k = min(_TOP_K, limit) if opts.top_k is None else opts.top_k
        at_most(self.where, "top_k", top_k, limit, why)
        tiles = top_k * sum(len(channels) for channels in table.values())
        at_most(
            self.where,
            "top_k x channels",
            tiles,
            MAX_TILES,
            f"{MAX_TILES} tiles per analysis; ask for fewer channels or a smaller top_k",
        )
        return replace(opts, layers=tuple(table), channels=table, top_k=top_k)

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
            with torch.no_grad():
                probabilities = torch.softmax(ctx.model(images), dim=1) if wanted else None
            files, data, figures = [], {}, []
            position = 0
            for channel, entries in zip(channels, table, strict=True):
                folder = f"{self.id}/{layer}/c{channel:04d}"
                records = []
                proj_tiles, patch_tiles = [], []
                for rank, entry in enumerate(entries):
                    row = row_of[entry.image]
                    box = ctx.world.unit_box(layer, entry.y, entry.x)
                    proj_tiles.append(
                        upscale(projection_rgb(crop_padded(maps[position + rank].cpu(), box)), TILE)
                    )
                    shown = ctx.display(images[row])
                    patch_tiles.append(upscale(crop_padded(shown, box), TILE))
                    predicted = int(probabilities[row].argmax())
                    tile = ctx.write_png(
                        side_by_side([proj_tiles[-1], patch_tiles[-1]], gap=2),
                        f"{folder}/tile_{rank + 1:02d}.png",
                        f"{layer} channel {channel}, rank {rank + 1}: projection | patch",
                    )
                    full = ctx.write_png(
                        boxed(shown, box, SHOW),
                        f"{folder}/image_{rank + 1:02d}.png",
                        f"dataset image {entry.image} with the receptive field of unit "
                        f"({entry.y}, {entry.x}) of {layer}",
                    )
                    files += [tile, full]
                    records.append(
                        {
                            **unit_record(entry, ctx.label_name(labels[row]), box),
                            "predicted": ctx.world.entry.labels[predicted],
                            "probability": round(float(probabilities[row, predicted]), 6),
                            "tile": tile["path"],
                            "full": full["path"],
                        }
                    )
                position += len(entries)
                figure = _channel_figure(proj_tiles, patch_tiles, k)
                figures.append(figure)
                data[str(channel)] = records
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
        warning = input_independence(ctx.model, rule)
        return self.section(ctx, records, warnings=[warning] if warning else [], tables=tables)

    @classmethod
    def contents(cls, section: dict[str, Any]) -> list[dict[str, str]]:
        return cls.layer_contents(section)

    @classmethod
    def pages(cls, section: dict[str, Any], manifest: dict[str, Any]) -> list[Page]:
        """The analysis page (a picture per layer), a page per layer (a thumbnail per channel)
        and a page per channel (its top-k tiles, each with its numbers and a link to the whole
        image with the receptive field drawn)."""
        pages = [cls.layers_page(section)]
        home = [("overview", INDEX), (section["title"], analysis_page(section["id"]))]
        synthetic = synthetic_pages(manifest)
        for layer, channels in section["tables"].items():
            here = layer_page(section["id"], layer)
            cards = []
            for channel, entries in by_channel(channels):
                best = entries[0] if entries else None
                note = (
                    f"best {best['value']:.3g}: image {best['image']} (label {best['label']})"
                    if best
                    else "no activations"
                )
                cards.append(
                    {
                        "channel": channel,
                        "href": channel_page(section["id"], layer, channel),
                        "picture": f"{section['id']}/{layer}/channel_{int(channel):04d}.png",
                        "width": 240,
                        "note": note,
                        "synthetic": synthetic.get((layer, int(channel)), ""),
                    }
                )
                pages.append(
                    Page(
                        path=channel_page(section["id"], layer, channel),
                        template="channel.html",
                        title=f"{layer} channel {channel}",
                        trail=[*home, (layer, here)],
                        context={
                            "tiles": entries,
                            "projection": section["options"]["projection"],
                            "synthetic": synthetic.get((layer, int(channel)), ""),
                            "warnings": section["warnings"],
                        },
                    )
                )
            pages.append(
                Page(
                    path=here,
                    template="layer.html",
                    title=f"{layer}: top-{section['options']['top_k']} per channel",
                    trail=home,
                    context={"cards": cards, "warnings": section["warnings"]},
                )
            )
        return pages

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

        def checkpoint_after(tables: dict[str, TopK]) -> None:
            counter["done"] += 1
            progress.update(1)
            if counter["done"] % every == 0 or counter["done"] == len(mine):
                done = {"done": str(counter["done"])}
                atomic_write_bytes(checkpoint, save(_flat(tables), metadata=done))

        todo = [batches[b] for b in mine[done:]]
        tops = scan_topk(
            ctx.model,
            layers,
            iterate_batches(ctx.world.dataset, todo, num_workers=ctx.data.num_workers),
            k=k,
            tops=tops,
            after_batch=checkpoint_after,
        )
        progress.close()
        shares = ranks.all_gather(tops)
        merged = shares[0]
        for share in shares[1:]:
            merged = {name: merged[name].merge(share[name]) for name in layers}
        if ranks.is_main:
            atomic_write_bytes(final, save(_flat(merged)))
        ranks.barrier()
        ctx.timings.setdefault(self.id, {})["scan_seconds"] = round(time.perf_counter() - start, 3)
        return merged


def _flat(tables: dict[str, TopK]) -> dict[str, torch.Tensor]:
    """Every layer's table as flat tensors for one safetensors file (`<layer>/values`, ...),
    serialised in memory and written by Python, so a full disk is an OSError like any other."""
    return {k: v for name, top in tables.items() for k, v in top.to_tensors(f"{name}/").items()}


def _channel_figure(
    proj_tiles: list[torch.Tensor], patch_tiles: list[torch.Tensor], k: int
) -> torch.Tensor:
    """3x3 (k) projections beside the matching receptive-field patches; grey where a channel
    has fewer than k entries."""
    size = proj_tiles[0].shape[-1] if proj_tiles else TILE
    blank = torch.full((3, size, size), 0.5)
    proj_tiles = proj_tiles + [blank] * (k - len(proj_tiles))
    patch_tiles = patch_tiles + [blank] * (k - len(patch_tiles))
    nrow = math.ceil(math.sqrt(k))
    return side_by_side([tile_grid(proj_tiles, nrow), tile_grid(patch_tiles, nrow)], gap=6)


def synthetic_pages(manifest: dict[str, Any]) -> dict[tuple[str, int], str]:
    """(layer, channel) -> where an activation-maximisation analysis of the job shows it."""
    found: dict[tuple[str, int], str] = {}
    for section in manifest["analyses"]:
        if section["kind"] == "activation-maximisation":
            for layer, channels in section["tables"].items():
                for channel in channels:
                    page = f"{layer_page(section['id'], layer)}#channel-{channel}"
                    found.setdefault((layer, int(channel)), page)
    return found
