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
from cnnzoo.interpret.scan import resumable_scan
from cnnzoo.interpret.topk import Entry, TopK

__all__ = ["MaxActivations", "MaxActivationsOptions"]

_CHECKPOINTS = 10  # scan checkpoints per run
_CHANNELS = 8  # channels per layer unless the job says otherwise
_TOP_K = 9  # the paper's 3x3


@dataclass(frozen=True)
class _Shown:
    """The images a layer's part draws from: preprocessed, their labels, the row of each dataset
    index and the model's class probabilities."""

    images: torch.Tensor
    labels: list[int]
    row_of: dict[int, int]
    probabilities: torch.Tensor


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
        for layer in table:
            world.check_projection(self.where, opts.projection, layer)
        return replace(opts, layers=tuple(table), channels=table, top_k=top_k)

    def run(self, ctx: JobContext) -> dict[str, Any]:
        layers: dict[str, tuple[int, ...]] = self.options.channels
        tops = self._scan(ctx, layers, self.options.top_k)
        rule = Rule(self.options.projection)
        records = ctx.run_parts(
            self.id,
            [f"layer-{name}" for name in layers],
            lambda key: self._render_layer(ctx, key[len("layer-") :], tops[key[len("layer-") :]]),
        )
        tables = {r["data"]["layer"]: r["data"]["channels"] for r in records.values()}
        warning = input_independence(ctx.model, rule)
        return self.section(ctx, records, warnings=[warning] if warning else [], tables=tables)

    def _render_layer(self, ctx: JobContext, layer: str, top: TopK) -> dict[str, Any]:
        """One layer's part: per channel its tiles, whole images and 3x3 figure, then the
        layer's overview of every channel's figure."""
        channels = self.options.channels[layer]
        table = [top.entries(row) for row in range(len(channels))]
        wanted = sorted({e.image for entries in table for e in entries})
        images, labels = ctx.images(wanted)
        row_of = {index: row for row, index in enumerate(wanted)}
        units = [
            Unit(row_of[e.image], channel, e.y, e.x)
            for channel, entries in zip(channels, table, strict=True)
            for e in entries
        ]
        rule = Rule(self.options.projection)
        maps = (
            project_units(ctx.model, layer, images, units, rule=rule) if units else torch.empty(0)
        )
        with torch.no_grad():
            probabilities = torch.softmax(ctx.model(images), dim=1) if wanted else torch.empty(0)
        shown = _Shown(images=images, labels=labels, row_of=row_of, probabilities=probabilities)
        files, data, figures = [], {}, []
        position = 0
        for channel, entries in zip(channels, table, strict=True):
            projections = maps[position : position + len(entries)]
            channel_files, records, figure = self._render_channel(
                ctx, layer, channel, entries, projections, shown
            )
            position += len(entries)
            files += channel_files
            figures.append(figure)
            data[str(channel)] = records
        files.insert(0, self._layer_overview(ctx, layer, channels, figures))
        return {"files": files, "data": {"layer": layer, "channels": data}}

    def _render_channel(
        self,
        ctx: JobContext,
        layer: str,
        channel: int,
        entries: list[Entry],
        projections: torch.Tensor,
        shown: _Shown,
    ) -> tuple[list[dict[str, str]], list[dict[str, Any]], torch.Tensor]:
        """A channel's files (a tile and a whole image per entry, then its figure), its
        manifest records and its figure."""
        folder = f"{self.id}/{layer}/c{channel:04d}"
        files, records, proj_tiles, patch_tiles = [], [], [], []
        for rank, entry in enumerate(entries):
            row = shown.row_of[entry.image]
            box = ctx.world.unit_box(layer, entry.y, entry.x)
            proj_tiles.append(
                upscale(projection_rgb(crop_padded(projections[rank].cpu(), box)), TILE)
            )
            image = ctx.display(shown.images[row])
            patch_tiles.append(upscale(crop_padded(image, box), TILE))
            predicted = int(shown.probabilities[row].argmax())
            tile = ctx.write_png(
                side_by_side([proj_tiles[-1], patch_tiles[-1]], gap=2),
                f"{folder}/tile_{rank + 1:02d}.png",
                f"{layer} channel {channel}, rank {rank + 1}: projection | patch",
            )
            full = ctx.write_png(
                boxed(image, box, SHOW),
                f"{folder}/image_{rank + 1:02d}.png",
                f"dataset image {entry.image} with the receptive field of unit "
                f"({entry.y}, {entry.x}) of {layer}",
            )
            files += [tile, full]
            records.append(
                {
                    **unit_record(entry, ctx.label_name(shown.labels[row]), box),
                    "predicted": ctx.world.entry.labels[predicted],
                    "probability": round(float(shown.probabilities[row, predicted]), 6),
                    "tile": tile["path"],
                    "full": full["path"],
                }
            )
        figure = _channel_figure(proj_tiles, patch_tiles, self.options.top_k)
        values = ", ".join(f"{e.value:.3g}" for e in entries)
        files.append(
            ctx.write_png(
                figure,
                f"{self.id}/{layer}/channel_{channel:04d}.png",
                f"{layer} channel {channel}: top-{len(entries)} {self.options.projection} "
                f"projections (left) and image patches (right); activations {values}",
            )
        )
        return files, records, figure

    def _layer_overview(
        self, ctx: JobContext, layer: str, channels: tuple[int, ...], figures: list[torch.Tensor]
    ) -> dict[str, str]:
        """Every channel's figure in one picture, padded to the largest."""
        width = max(f.shape[-1] for f in figures)
        height = max(f.shape[-2] for f in figures)
        padded = [
            torch.nn.functional.pad(f, (0, width - f.shape[-1], 0, height - f.shape[-2]), value=1.0)
            for f in figures
        ]
        overview = tile_grid(padded, nrow=min(4, len(padded)), padding=10)
        return ctx.write_png(
            overview,
            f"{self.id}/{layer}.png",
            f"{layer}: channels {', '.join(map(str, channels))} "
            "(each: projections left, patches right)",
        )

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
        """The merged top-k tables of the job's images (see `cnnzoo.interpret.scan`)."""
        start = time.perf_counter()
        final = (ctx.state_dir / self.id / "topk.safetensors").is_file()
        tops = resumable_scan(
            ctx.model,
            layers,
            ctx.world.dataset,
            ctx.indices,
            ctx.state_dir / self.id,
            ctx.ranks,
            k=k,
            batch_size=ctx.data.batch_size,
            num_workers=ctx.data.num_workers,
            checkpoints=_CHECKPOINTS,
            progress=f"{self.id} scan" if ctx.progress else None,
        )
        if not final:
            seconds = round(time.perf_counter() - start, 3)
            ctx.timings.setdefault(self.id, {})["scan_seconds"] = seconds
        return tops


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
