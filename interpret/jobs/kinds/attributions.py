"""`attributions`: per image, the map of each attribution method over the image, side by side.

Options (job file):
    images   dataset indices (default 0, 1, 2, 3)
    methods  any of `cnnzoo.interpret.methods.METHODS` (default: all of them)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from cnnzoo.interpret.explain import explain
from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.context import SHOW, JobContext
from cnnzoo.interpret.jobs.limits import MAX_IMAGES
from cnnzoo.interpret.jobs.options import Options, index_list, option, some_of
from cnnzoo.interpret.jobs.world import World
from cnnzoo.interpret.methods import METHODS
from cnnzoo.interpret.render import overlay, side_by_side, upscale

__all__ = ["Attributions", "AttributionsOptions"]


@dataclass(frozen=True)
class AttributionsOptions(Options):
    images: tuple[int, ...] = option((0, 1, 2, 3), index_list)
    methods: tuple[str, ...] = option(METHODS, some_of(METHODS, "methods"))


class Attributions(Analysis[AttributionsOptions]):
    kind = "attributions"
    title = "Attribution maps, one method per panel"
    Options = AttributionsOptions
    legends = ("attribution",)

    def resolve_options(self, world: World) -> AttributionsOptions:
        images = world.image_indices(f"{self.where}: images", self.options.images, MAX_IMAGES)
        return replace(self.options, images=images)

    def run(self, ctx: JobContext) -> dict[str, Any]:
        methods = self.options.methods

        def render(index: int) -> dict[str, Any]:
            images, labels = ctx.images([index])
            panels = [upscale(ctx.display(images[0]), SHOW)]
            results, warnings = {}, []
            for method in methods:
                result = explain(ctx.model, images[:1], method)
                shown = overlay(ctx.display(images[0]), torch.from_numpy(result.attribution))
                panels.append(upscale(shown, SHOW))
                results[method] = {"target": result.target, "score": round(result.score, 6)}
                warnings += result.warnings
            first = results[methods[0]]
            label = ctx.label_name(labels[0])
            predicted = ctx.world.entry.labels[first["target"]]
            caption = (
                f"image {index} (label {label}), predicted {predicted} p={first['score']:.3f}: "
                f"{' | '.join(methods)} (red: for the class, blue: against, over the dimmed image)"
            )
            picture = side_by_side(panels)
            return {
                "files": [ctx.write_png(picture, f"{self.id}/image_{index:05d}.png", caption)],
                "data": {
                    "image": index,
                    "label": label,
                    "methods": results,
                    "warnings": warnings,
                },
            }

        return self.per_image(ctx, self.options.images, render)
