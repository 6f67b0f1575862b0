"""`filters`: the first-layer kernels as pictures (Krizhevsky et al. 2012, Fig. 3).

Options (job file):
    layer   a convolution (default: the first)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cnnzoo.errors import JobFileError
from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.context import JobContext
from cnnzoo.interpret.jobs.options import Options, option, text
from cnnzoo.interpret.jobs.world import World
from cnnzoo.interpret.render import filter_grid

__all__ = ["Filters", "FiltersOptions"]


@dataclass(frozen=True)
class FiltersOptions(Options):
    layer: str | None = option(None, text)


class Filters(Analysis[FiltersOptions]):
    kind = "filters"
    title = "First-layer filters (Krizhevsky et al. 2012, Fig. 3)"
    Options = FiltersOptions

    def resolve_options(self, world: World) -> FiltersOptions:
        convs = world.of_kind("Conv2d")
        layer = world.layer(
            f"{self.where}: layer", self.options.layer or convs[0], world.selectable
        )
        if world.layers[layer].kind != "Conv2d":
            raise JobFileError(f"{self.where}: layer must be a Conv2d layer")
        return replace(self.options, layer=layer)

    def run(self, ctx: JobContext) -> dict[str, Any]:
        layer = self.options.layer

        def render(key: str) -> dict[str, Any]:
            weight = ctx.model.get_submodule(layer).weight
            kernel = "x".join(map(str, weight.shape[1:]))
            caption = f"{layer}: {weight.shape[0]} kernels of {kernel}, each min-max normalised"
            return {
                "files": [ctx.write_png(filter_grid(weight), f"{self.id}/{layer}.png", caption)],
                "data": {"shape": list(weight.shape)},
            }

        return self.section(ctx, ctx.run_parts(self.id, ["filters"], render))
