"""`evolution`: how features develop during training (Zeiler & Fergus 2014, Fig. 4).

For each saved epoch of a training run, the strongest activation of each chosen channel over a
subset of the data, projected back to pixels: one row per channel, one column per epoch.

Options (job file):
    checkpoints  a `cnnzoo train` output folder (default: the zoo's shipped epochs)
    epochs       which saved epochs (default: the paper's 1, 2, 5, 10, 20, 30, 40, 64 that exist)
    layer        a spatial layer (default: the last convolution)
    channels     how many channels, spread evenly (default 6), or a list of them
    subset       images scanned per epoch (default 2000)
    projection   gradient | deconvnet | guided-backprop (default deconvnet)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from safetensors.torch import load_file, save

from cnnzoo.errors import CnnzooError, JobFileError, NotFound
from cnnzoo.fileio import atomic_write_bytes
from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.context import TILE, JobContext, unit_record
from cnnzoo.interpret.jobs.options import (
    Options,
    channels_of_a_layer,
    index_list,
    option,
    positive,
    projection_option,
    text,
)
from cnnzoo.interpret.jobs.world import World
from cnnzoo.interpret.projection import Unit, project_units
from cnnzoo.interpret.render import crop_padded, projection_rgb, tile_grid, upscale
from cnnzoo.interpret.rules import Rule, input_independence
from cnnzoo.interpret.scan import batch_ranges, iterate_batches, scan_topk
from cnnzoo.zoo.checkpoints import list_epochs

__all__ = ["Evolution", "EvolutionOptions"]

ZF_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)  # the epochs of ZF Fig. 4


@dataclass(frozen=True)
class EvolutionOptions(Options):
    checkpoints: str | None = option(None, text)
    layer: str | None = option(None, text)
    channels: Any = option(6, channels_of_a_layer)  # resolved: (channel, ...)
    epochs: tuple[int, ...] | None = option(None, index_list)
    subset: int = option(2000, positive)
    projection: str = projection_option()


class Evolution(Analysis[EvolutionOptions]):
    kind = "evolution"
    title = "Feature evolution during training (Zeiler & Fergus 2014, Fig. 4)"
    Options = EvolutionOptions
    legends = ("projection",)

    def resolve_options(self, world: World) -> EvolutionOptions:
        opts, where = self.options, self.where
        path = world.resolve_path(opts.checkpoints) if opts.checkpoints else world.entry.weights_dir
        epochs = dict(list_epochs(path)) if path is not None else {}
        if not epochs:
            raise NotFound(
                f"{where}: checkpoints: no epoch_NNN.safetensors under {path}; "
                "point it at a `cnnzoo train` output folder"
            )
        wanted = opts.epochs or [e for e in ZF_EPOCHS if e in epochs] or sorted(epochs)
        missing = [e for e in wanted if e not in epochs]
        if missing:
            raise JobFileError(f"{where}: epochs {missing} not saved; available: {sorted(epochs)}")
        try:  # the architecture must fit (the epochs of one training run share it)
            world.build(epochs[wanted[0]])
        except CnnzooError as err:
            raise type(err)(f"{where}: checkpoints: {err.reason}") from None
        layer = world.layer(f"{where}: layer", opts.layer or world.of_kind("Conv2d")[-1])
        world.check_projection(where, opts.projection, layer)
        return replace(
            opts,
            checkpoints=str(path),
            epochs=tuple(wanted),
            layer=layer,
            channels=world.channels(f"{where}: channels", layer, opts.channels),
        )

    def run(self, ctx: JobContext) -> dict[str, Any]:
        opts = self.options
        layer, channels = opts.layer, opts.channels
        tiles_dir = ctx.state_dir / self.id
        scanned = len(ctx.indices[: opts.subset])
        keys = [f"epoch-{e:03d}" for e in opts.epochs]
        records = ctx.run_parts(self.id, keys, lambda key: self._run_epoch(ctx, key))
        files = []
        if ctx.ranks.is_main:
            columns = [load_file(str(tiles_dir / f"{key}.safetensors"))["tiles"] for key in keys]
            grid = torch.stack(
                [columns[col][row] for row in range(len(channels)) for col in range(len(keys))]
            )
            picture = tile_grid(list(grid), nrow=len(keys), padding=3)
            files.append(
                ctx.write_png(
                    picture,
                    f"{self.id}/{layer}.png",
                    f"{layer} channels {', '.join(map(str, channels))} (rows): the strongest "
                    f"activation's projection over {scanned} images at epochs "
                    f"{', '.join(map(str, opts.epochs))} (columns)",
                )
            )
        warning = input_independence(ctx.model, Rule(opts.projection))
        section = self.section(
            ctx,
            records,
            warnings=[warning] if warning else [],
            tables={r["data"]["epoch"]: r["data"]["channels"] for r in records.values()},
        )
        section["files"] = files
        return section

    def _run_epoch(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """One epoch's part: its checkpoint's strongest unit per channel, projected; the tiles
        wait in the state folder for the grid of every epoch."""
        opts = self.options
        layer, channels = opts.layer, opts.channels
        epoch = int(key.split("-")[1])
        model = ctx.world.build(dict(list_epochs(opts.checkpoints))[epoch]).to(ctx.device).eval()
        batches = batch_ranges(ctx.indices[: opts.subset], ctx.data.batch_size)
        top = scan_topk(model, {layer: channels}, iterate_batches(ctx.world.dataset, batches), k=1)[
            layer
        ]
        entries = [top.entries(row)[0] for row in range(len(channels))]
        wanted = sorted({e.image for e in entries})
        images, labels = ctx.images(wanted)
        units = [
            Unit(wanted.index(e.image), c, e.y, e.x) for c, e in zip(channels, entries, strict=True)
        ]
        maps = project_units(model, layer, images, units, rule=Rule(opts.projection))
        boxes = [ctx.world.unit_box(layer, e.y, e.x) for e in entries]
        tiles = torch.stack(
            [
                upscale(projection_rgb(crop_padded(m.cpu(), box)), TILE)
                for m, box in zip(maps, boxes, strict=True)
            ]
        )
        # serialised here, written by Python: a full disk is an OSError like any other write
        atomic_write_bytes(
            ctx.state_dir / self.id / f"{key}.safetensors", save({"tiles": tiles.contiguous()})
        )
        data = {
            str(c): unit_record(e, ctx.label_name(labels[wanted.index(e.image)]), box)
            for c, e, box in zip(channels, entries, boxes, strict=True)
        }
        return {"files": [], "data": {"epoch": epoch, "channels": data}}
