"""`randomisation`: the model-randomisation sanity check (Adebayo et al. 2018).

Re-initialise layers from the top down, one more at a time, and show how each rule-based map of
the same images changes (see `cnnzoo.interpret.sanity`).

Options (job file):
    images   dataset indices (default 0 to 7; the first four are drawn)
    layers   convolution or linear layers, re-initialised in this order (default: all, top down)
    methods  any of gradient, deconvnet, guided-backprop (default: all three)
    seed     seeds the re-initialisation (default 0)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cnnzoo.errors import LayerNotFound
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
)
from cnnzoo.interpret.jobs.world import World
from cnnzoo.interpret.methods import RULE_METHODS
from cnnzoo.interpret.render import attribution_rgb, side_by_side, tile_grid, upscale
from cnnzoo.interpret.rules import Rule, input_independence
from cnnzoo.interpret.sanity import cascading_randomisation

__all__ = ["Randomisation", "RandomisationOptions"]


@dataclass(frozen=True)
class RandomisationOptions(Options):
    images: tuple[int, ...] = option(tuple(range(8)), index_list)
    layers: tuple[str, ...] | None = option(None, name_list)
    methods: tuple[str, ...] = option(RULE_METHODS, some_of(RULE_METHODS, "methods"))
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
            if name not in weighted:
                raise LayerNotFound(
                    f"{where}: layers: {name!r} is not a convolution or linear layer; "
                    f"valid layers: {', '.join(weighted)}"
                )
        images = world.image_indices(f"{where}: images", opts.images, MAX_RANDOMISATION_IMAGES)
        return replace(opts, images=images, layers=tuple(names))

    def run(self, ctx: JobContext) -> dict[str, Any]:
        opts = self.options
        records = ctx.run_parts(self.id, ["check"], lambda key: self._check(ctx))
        warnings = [input_independence(ctx.model, Rule(m)) for m in opts.methods]
        return self.section(
            ctx, records, warnings=[w for w in warnings if w], tables=records["check"]["data"]
        )

    def _check(self, ctx: JobContext) -> dict[str, Any]:
        """The check's one part: the cascade, a picture per drawn image, the correlations."""
        opts = self.options
        images, _ = ctx.images(list(opts.images))
        rules = [Rule(m) for m in opts.methods]
        result = cascading_randomisation(ctx.model, images, opts.layers, rules, seed=opts.seed)
        files = []
        for row, index in enumerate(opts.images[:4]):
            tiles = [
                upscale(attribution_rgb(result.maps[m][stage, row]), TILE * 2)
                for m in opts.methods
                for stage in range(len(result.stages))
            ]
            picture = side_by_side(
                [
                    upscale(ctx.display(images[row]), TILE * 2),
                    tile_grid(tiles, len(result.stages)),
                ]
            )
            stages = " | ".join(result.stages)
            files.append(
                ctx.write_png(
                    picture,
                    f"{self.id}/image_{index:05d}.png",
                    f"image {index}: rows {', '.join(opts.methods)}; columns: {stages} "
                    "(layers re-initialised cumulatively from the top)",
                )
            )
        correlation = {m: [round(c, 4) for c in values] for m, values in result.correlation.items()}
        lines = "; ".join(
            f"{m}: {', '.join(f'{c:.2f}' for c in values)}" for m, values in correlation.items()
        )
        files[0]["caption"] += (
            f". Mean rank correlation with the trained model's map per stage: {lines}"
        )
        return {
            "files": files,
            "data": {"stages": list(result.stages), "correlation": correlation},
        }
