"""`randomisation`: the model-randomisation sanity check (Adebayo et al. 2018).

Re-initialise layers from the top down, one more at a time, and show how each method's map of
the same images changes (see `cnnzoo.interpret.sanity`): the rule-based maps beside Grad-CAM and
guided Grad-CAM, Adebayo et al.'s contrast. Each stage's similarity with the trained model's
maps is measured three ways: rank correlation of absolute values, signed rank correlation and
SSIM.

Options (job file):
    images   dataset indices (default 0 to 7; the first four are drawn)
    layers   layers with parameters, re-initialised in this order (default: every convolution and
             linear layer, top down)
    methods  any of `cnnzoo.interpret.methods.METHODS` (default: gradient, deconvnet,
             guided-backprop, grad-cam, guided-grad-cam)
    layer    Grad-CAM's layer (default: the last spatial layer that runs once)
    seed     seeds the re-initialisation (default 0)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.context import TILE, JobContext
from cnnzoo.interpret.jobs.limits import MAX_RANDOMISATION_IMAGES
from cnnzoo.interpret.jobs.options import (
    Options,
    index_list,
    name_list,
    option,
    random_seed,
    some_of,
    text,
)
from cnnzoo.interpret.jobs.world import World
from cnnzoo.interpret.methods import METHODS
from cnnzoo.interpret.render import attribution_rgb, side_by_side, tile_grid, upscale, with_scale
from cnnzoo.interpret.sanity import ADEBAYO_METHODS, cascading_randomisation
from cnnzoo.interpret.torch_backend import explainer_warnings

__all__ = ["Randomisation", "RandomisationOptions"]

_MEASURES = (
    ("correlation", "rank correlation of |map|"),
    ("signed", "signed rank correlation"),
    ("ssim", "SSIM"),
)


@dataclass(frozen=True)
class RandomisationOptions(Options):
    images: tuple[int, ...] = option(tuple(range(8)), index_list)
    layers: tuple[str, ...] | None = option(None, name_list)
    methods: tuple[str, ...] = option(ADEBAYO_METHODS, some_of(METHODS, "methods"))
    layer: str | None = option(None, text)
    seed: int = option(0, random_seed)


class Randomisation(Analysis[RandomisationOptions]):
    kind = "randomisation"
    title = "Model-randomisation sanity check (Adebayo et al. 2018)"
    Options = RandomisationOptions
    legends = ("attribution",)

    def resolve_options(self, world: World) -> RandomisationOptions:
        opts, where = self.options, self.where
        weighted = world.of_kind("Conv2d", "Linear")
        names = opts.layers if opts.layers is not None else tuple(weighted[::-1])
        for name in names:
            world.layer(f"{where}: layers", name, world.randomisable)
        images = world.image_indices(f"{where}: images", opts.images, MAX_RANDOMISATION_IMAGES)
        world.method_layer(where, opts.layer, opts.methods)
        world.check_methods(where, opts.methods, opts.layer)
        return replace(opts, images=images, layers=tuple(names))

    def run(self, ctx: JobContext) -> dict[str, Any]:
        records = ctx.run_parts(self.id, ["check"], lambda key: self._check(ctx))
        warnings = [w for m in self.options.methods for w in explainer_warnings(ctx.model, m)]
        return self.section(ctx, records, warnings=warnings, tables=records["check"]["data"])

    def _check(self, ctx: JobContext) -> dict[str, Any]:
        """The check's one part: the cascade, a picture per drawn image, the similarities."""
        opts = self.options
        images, _ = ctx.images(list(opts.images))
        result = cascading_randomisation(
            ctx.model, images, opts.layers, opts.methods, seed=opts.seed, layer=opts.layer
        )
        stages = " | ".join(result.stages)
        files = []
        for row, index in enumerate(opts.images[:4]):
            tiles = []
            for m in opts.methods:
                for stage in range(len(result.stages)):
                    found = result.maps[m][stage, row]
                    tile = upscale(attribution_rgb(found), TILE * 2)
                    tiles.append(with_scale(tile, float(found.abs().max())))
            shown = upscale(ctx.display(images[row]), TILE * 2)
            picture = side_by_side([shown, tile_grid(tiles, len(result.stages))])
            files.append(
                ctx.write_png(
                    picture,
                    f"{self.id}/image_{index:05d}.png",
                    f"image {index}: rows {', '.join(opts.methods)}; columns: {stages} "
                    "(layers re-initialised cumulatively from the top); each map at its own "
                    "scale, the ± value under it",
                )
            )
        tables: dict[str, Any] = {"stages": list(result.stages)}
        lines = []
        for key, title in _MEASURES:
            table = {m: [round(v, 4) for v in values] for m, values in getattr(result, key).items()}
            tables[key] = table
            per_method = "; ".join(
                f"{m}: {', '.join(f'{v:.2f}' for v in vs)}" for m, vs in table.items()
            )
            lines.append(f"{title}: {per_method}")
        files[0]["caption"] += (
            ". Mean similarity with the trained model's map per stage, " + ". ".join(lines)
        )
        return {"files": files, "data": tables}
