"""`occlusion`: occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7).

Per image, a grey square slides over it; maps of the strongest feature map's total activation,
the true class's probability and the top label against the square's position.

Options (job file):
    images   dataset indices (default 0, 1)
    layer    the layer whose strongest feature map is tracked (default: the last convolution)
    window   the square's side in pixels (default: a quarter of the image side)
    stride   its step in pixels (default: about half the window)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from cnnzoo.errors import JobFileError
from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.context import SHOW, JobContext
from cnnzoo.interpret.jobs.limits import MAX_IMAGES
from cnnzoo.interpret.jobs.options import Options, index_list, option, positive, text
from cnnzoo.interpret.jobs.world import World
from cnnzoo.interpret.occlusion import occlusion_maps
from cnnzoo.interpret.render import (
    heat_rgb,
    label_colours,
    label_legend,
    side_by_side,
    upscale,
)

__all__ = ["Occlusion", "OcclusionOptions"]


@dataclass(frozen=True)
class OcclusionOptions(Options):
    images: tuple[int, ...] = option((0, 1), index_list)
    layer: str | None = option(None, text)
    window: int | None = option(None, positive)
    stride: int | None = option(None, positive)


class Occlusion(Analysis[OcclusionOptions]):
    kind = "occlusion"
    title = "Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7)"
    Options = OcclusionOptions
    legends = ("heat",)

    def resolve_options(self, world: World) -> OcclusionOptions:
        opts, where = self.options, self.where
        images = world.image_indices(f"{where}: images", opts.images, MAX_IMAGES)
        last_conv = world.of_kind("Conv2d")[-1]
        layer = world.layer(f"{where}: layer", opts.layer or last_conv, world.selectable)
        if len(world.layers[layer].output_shape) != 3:
            raise JobFileError(
                f"{where}: layer {layer!r} has no feature maps to track; pick a convolution, "
                f"e.g. {last_conv}"
            )
        side = min(world.entry.input_shape[1:])
        for key in ("window", "stride"):
            value = getattr(opts, key)
            if value is not None and value > side:
                raise JobFileError(
                    f"{where}: {key} = {value} exceeds the {world.entry.name} input of {side} px; "
                    f"use at most {side}"
                )
        return replace(opts, images=images, layer=layer)

    def run(self, ctx: JobContext) -> dict[str, Any]:
        return self.per_image(
            ctx, self.options.images, lambda index: self._render_image(ctx, index)
        )

    def _render_image(self, ctx: JobContext, index: int) -> dict[str, Any]:
        """One image's part: the image beside its three maps of Fig. 7."""
        opts = self.options
        labels_of_model = ctx.world.entry.labels
        colours = label_colours(len(labels_of_model))
        images, labels = ctx.images([index])
        true_class = labels[0]
        maps = occlusion_maps(
            ctx.model,
            images[:1],
            true_class,
            opts.layer,
            window=opts.window,
            stride=opts.stride,
        )
        size = tuple(images.shape[-2:])

        def grow(grid: torch.Tensor) -> torch.Tensor:
            big = torch.nn.functional.interpolate(grid[None].float(), size=size, mode="nearest")
            return upscale(big[0], SHOW)

        activation = maps.activation
        peak = float(activation.max())
        top_colours = colours[maps.top_label].permute(2, 0, 1)
        panels = [
            upscale(ctx.display(images[0]), SHOW),
            grow(heat_rgb(activation, 0.0, peak if peak > 0 else 1.0)),
            grow(heat_rgb(maps.probability, 0.0, 1.0)),
            grow(top_colours),
        ]
        seen = sorted({int(c) for c in maps.top_label.flatten()})
        panels.append(label_legend([labels_of_model[c] for c in seen], colours[seen]))
        caption = (
            f"image {index} (true class {labels_of_model[true_class]}), grey "
            f"{maps.window}px square in steps of {maps.stride}px: image | {opts.layer} map "
            f"{maps.feature_channel} total activation | p(true class) (black 0 .. white 1) | "
            f"top label (colours as in the legend: {', '.join(labels_of_model[c] for c in seen)})"
        )
        data = {
            "image": index,
            "true_class": true_class,
            "feature_channel": maps.feature_channel,
            "window": maps.window,
            "stride": maps.stride,
            "min_probability": round(float(maps.probability.min()), 6),
            "max_probability": round(float(maps.probability.max()), 6),
            "top_labels": seen,
        }
        picture = side_by_side(panels)
        return {
            "files": [ctx.write_png(picture, f"{self.id}/image_{index:05d}.png", caption)],
            "data": data,
        }
