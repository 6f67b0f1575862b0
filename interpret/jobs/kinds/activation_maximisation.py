"""`activation-maximisation`: inputs optimised from noise to excite single units (Erhan et al.
2009; regularised as in Yosinski et al. 2015, see `cnnzoo.interpret.actmax`).

For each chosen layer and channel, the unit at the centre of the channel's map; the gallery shows
each synthetic image beside the dataset's top-k of the same channel when the job also has a
`max-activations` analysis of that layer.

Options (job file):
    layers           layer names (default: every convolution)
    channels         how many channels, spread evenly (default 8), a list, or a table per layer
    steps            gradient-ascent steps (default 200)
    learning_rate    step size on the normalised gradient (default 0.05)
    l2_decay         per-step decay towards the dataset mean (default 0.01)
    blur_every       blur every this many steps, 0 never (default 4)
    blur_sigma       Gaussian blur width in pixels (default 0.5)
    jitter           random shift per step in pixels (default 2)
    clip_percentile  pixels below this percentile of norm become the mean colour (default 10)
    seed             seeds the starting noise and the jitter (default 0)
    batch_size       units optimised together (default 64)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from cnnzoo.interpret.actmax import Regularisers, maximise_units
from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.context import TILE, JobContext
from cnnzoo.interpret.jobs.limits import MAX_STEPS, MAX_UNITS, at_most, batch_limit
from cnnzoo.interpret.jobs.options import (
    Options,
    channel_choice,
    count,
    name_list,
    option,
    positive,
    random_seed,
    real,
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
from cnnzoo.interpret.render import tile_grid, upscale

__all__ = ["ActivationMaximisation", "ActivationMaximisationOptions"]

_CHANNELS = 8


@dataclass(frozen=True)
class ActivationMaximisationOptions(Options):
    layers: tuple[str, ...] | None = option(None, name_list)
    channels: Any = option(_CHANNELS, channel_choice)  # resolved: {layer: (channel, ...)}
    steps: int = option(200, positive)
    learning_rate: float = option(0.05, real(0, 10))
    l2_decay: float = option(0.01, real(0, 0.99))
    blur_every: int = option(4, count)
    blur_sigma: float = option(0.5, real(0, 10))
    jitter: int = option(2, count)
    clip_percentile: float = option(10.0, real(0, 99))
    seed: int = option(0, random_seed)
    batch_size: int = option(64, positive)

    def regularisers(self) -> Regularisers:
        return Regularisers(
            steps=self.steps,
            learning_rate=self.learning_rate,
            l2_decay=self.l2_decay,
            blur_every=self.blur_every,
            blur_sigma=self.blur_sigma,
            jitter=self.jitter,
            clip_percentile=self.clip_percentile,
        )


class ActivationMaximisation(Analysis[ActivationMaximisationOptions]):
    kind = "activation-maximisation"
    title = "Activation maximisation (Erhan et al. 2009; Yosinski et al. 2015)"
    Options = ActivationMaximisationOptions

    def resolve_options(self, world: World) -> ActivationMaximisationOptions:
        opts = self.options
        where = self.where
        table = world.channel_table(
            where, opts.layers, opts.channels, world.of_kind("Conv2d"), _CHANNELS
        )
        units = sum(len(channels) for channels in table.values())
        at_most(where, "units (channels of every layer)", units, MAX_UNITS, "per analysis")
        at_most(where, "steps", opts.steps, MAX_STEPS, "per unit")
        shape = tuple(world.entry.input_shape)
        limit = batch_limit(shape)
        at_most(where, "batch_size", opts.batch_size, limit, f"{limit} images of {shape} fit")
        side = min(shape[1:])
        at_most(where, "jitter", opts.jitter, side // 2, f"half the {side} px input")
        return replace(opts, layers=tuple(table), channels=table)

    def run(self, ctx: JobContext) -> dict[str, Any]:
        records = ctx.run_parts(
            self.id,
            [f"layer-{name}" for name in self.options.channels],
            lambda key: self._render_layer(ctx, key[len("layer-") :]),
        )
        tables = {r["data"]["layer"]: r["data"]["channels"] for r in records.values()}
        return self.section(ctx, records, tables=tables)

    def _render_layer(self, ctx: JobContext, layer: str) -> dict[str, Any]:
        """One layer's part: an optimised input per channel, and the layer's grid of them."""
        opts = self.options
        entry = ctx.world.entry
        preprocess = entry.preprocess
        bounds = (
            [(0 - m) / s for m, s in zip(preprocess.mean, preprocess.std, strict=True)],
            [(1 - m) / s for m, s in zip(preprocess.mean, preprocess.std, strict=True)],
        )
        channels = opts.channels[layer]
        shape = ctx.world.layers[layer].output_shape
        y, x = (shape[1] // 2, shape[2] // 2) if len(shape) == 3 else (0, 0)
        result = maximise_units(
            ctx.model,
            layer,
            [(c, y, x) for c in channels],
            entry.input_shape,
            regularisers=opts.regularisers(),
            seed=opts.seed,
            batch_size=opts.batch_size,
            bounds=bounds,
        )
        with torch.no_grad():
            probabilities = torch.softmax(ctx.model(result.images), dim=1)
        tiles, files, data = [], [], {}
        for row, channel in enumerate(channels):
            tile = upscale(ctx.display(result.images[row]), TILE * 2)
            tiles.append(tile)
            predicted = int(probabilities[row].argmax())
            data[str(channel)] = {
                "activation": float(result.activation[row]),
                "start": float(result.start[row]),
                "y": y,
                "x": x,
                "predicted": entry.labels[predicted],
                "probability": round(float(probabilities[row, predicted]), 6),
            }
            files.append(
                ctx.write_png(
                    tile,
                    f"{self.id}/{layer}/channel_{channel:04d}.png",
                    f"{layer} channel {channel}, unit ({y}, {x}): activation "
                    f"{float(result.start[row]):.3g} for the starting noise, "
                    f"{float(result.activation[row]):.3g} after {opts.steps} steps; "
                    f"classified {entry.labels[predicted]} "
                    f"(p={float(probabilities[row, predicted]):.3f})",
                )
            )
        grid = tile_grid(tiles, nrow=min(8, len(tiles)), padding=4)
        files.insert(
            0,
            ctx.write_png(
                grid,
                f"{self.id}/{layer}.png",
                f"{layer}: inputs optimised from noise to maximise the centre unit of "
                f"channels {', '.join(map(str, channels))} ({opts.steps} steps)",
            ),
        )
        return {"files": files, "data": {"layer": layer, "channels": data}}

    @classmethod
    def contents(cls, section: dict[str, Any]) -> list[dict[str, str]]:
        return cls.layer_contents(section)

    @classmethod
    def pages(cls, section: dict[str, Any], manifest: dict[str, Any]) -> list[Page]:
        """The analysis page and one page per layer: each channel's synthetic image beside the
        dataset's top-k of the same channel (from a max-activations analysis of the job)."""
        pages = [cls.layers_page(section)]
        home = [("overview", INDEX), (section["title"], analysis_page(section["id"]))]
        dataset = _dataset_tops(manifest)
        for layer, channels in section["tables"].items():
            cards = [
                {
                    "channel": channel,
                    "picture": f"{section['id']}/{layer}/channel_{int(channel):04d}.png",
                    **numbers,
                    "dataset": dataset.get((layer, int(channel))),
                }
                for channel, numbers in by_channel(channels)
            ]
            pages.append(
                Page(
                    path=layer_page(section["id"], layer),
                    template="synthetic.html",
                    title=f"{layer}: synthetic images",
                    trail=home,
                    context={
                        "cards": cards,
                        "any_dataset": any(card["dataset"] for card in cards),
                        "warnings": section["warnings"],
                    },
                )
            )
        return pages


def _dataset_tops(manifest: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """(layer, channel) -> the first max-activations analysis of the job that shows it."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for section in manifest["analyses"]:
        if section["kind"] != "max-activations":
            continue
        for layer, channels in section["tables"].items():
            for channel, entries in channels.items():
                if entries:
                    found.setdefault(
                        (layer, int(channel)),
                        {
                            "href": channel_page(section["id"], layer, channel),
                            "picture": f"{section['id']}/{layer}/channel_{int(channel):04d}.png",
                            "width": 240,
                            "count": len(entries),
                            "best": entries[0]["value"],
                        },
                    )
    return found
