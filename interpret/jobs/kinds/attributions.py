"""`attributions`: per image, the map of each attribution method over the image, side by side.

Each map is drawn over the dimmed image at its own scale, which the bar under it gives: full
colour at ±the map's largest |value|.

Options (job file):
    images   dataset indices (default 0, 1, 2, 3)
    methods  any of `cnnzoo.interpret.methods.METHODS` (default: all of them)
    layer    Grad-CAM's layer (default: the last spatial layer that runs once)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from cnnzoo.interpret.explain import explain, takes_layer
from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.context import SHOW, JobContext
from cnnzoo.interpret.jobs.limits import MAX_IMAGES
from cnnzoo.interpret.jobs.options import Options, index_list, option, some_of, text
from cnnzoo.interpret.jobs.world import World
from cnnzoo.interpret.methods import METHODS
from cnnzoo.interpret.render import overlay, side_by_side, upscale, with_scale

__all__ = ["Attributions", "AttributionsOptions"]


@dataclass(frozen=True)
class AttributionsOptions(Options):
    images: tuple[int, ...] = option((0, 1, 2, 3), index_list)
    methods: tuple[str, ...] = option(METHODS, some_of(METHODS, "methods"))
    layer: str | None = option(None, text)


class Attributions(Analysis[AttributionsOptions]):
    kind = "attributions"
    title = "Attribution maps, one method per panel"
    Options = AttributionsOptions
    legends = ("attribution",)

    def resolve_options(self, world: World) -> AttributionsOptions:
        opts, where = self.options, self.where
        images = world.image_indices(f"{where}: images", opts.images, MAX_IMAGES)
        world.method_layer(where, opts.layer, opts.methods)
        world.check_methods(where, opts.methods, opts.layer)
        return replace(opts, images=images)

    def run(self, ctx: JobContext) -> dict[str, Any]:
        return self.per_image(
            ctx, self.options.images, lambda index: self._render_image(ctx, index)
        )

    def _render_image(self, ctx: JobContext, index: int) -> dict[str, Any]:
        """One image's part: the image, then each method's map over it with its scale."""
        methods = self.options.methods
        images, labels = ctx.images([index])
        panels = [upscale(ctx.display(images[0]), SHOW)]
        results, warnings = {}, []
        for method in methods:
            layer = self.options.layer if takes_layer(method) else None
            result = explain(ctx.model, images[:1], method, layer=layer)
            attribution = torch.from_numpy(result.attribution)
            peak = float(attribution.abs().max())
            shown = overlay(ctx.display(images[0]), attribution)
            panels.append(with_scale(upscale(shown, SHOW), peak))
            results[method] = {
                "target": result.target,
                "score": round(result.score, 6),
                "peak": float(f"{peak:.6g}"),
            }
            warnings += result.warnings
        first = results[methods[0]]
        label = ctx.label_name(labels[0])
        predicted = ctx.world.entry.labels[first["target"]]
        caption = (
            f"image {index} (label {label}), predicted {predicted} p={first['score']:.3f}: "
            f"{' | '.join(methods)} (red: for the class, blue: against, over the dimmed image; "
            "full colour at the ± value under each map)"
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
