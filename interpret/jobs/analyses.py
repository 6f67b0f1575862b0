"""The analyses a job can run. Each takes the job context and its spec and returns its manifest
section: kind, id, options, the files with captions, and its tables."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from cnnzoo.fileio import atomic_path
from cnnzoo.interpret.jobs.runner import JobContext
from cnnzoo.interpret.jobs.spec import AnalysisSpec
from cnnzoo.interpret.projection import Unit, project_units
from cnnzoo.interpret.render import (
    attribution_rgb,
    crop_padded,
    filter_grid,
    heat_rgb,
    label_colours,
    overlay,
    projection_rgb,
    side_by_side,
    tile_grid,
    upscale,
)
from cnnzoo.interpret.rules import Rule
from cnnzoo.interpret.scan import batch_ranges, iterate_batches, scan_topk
from cnnzoo.interpret.topk import Entry, TopK

__all__ = ["RUNNERS"]

_RULES = {"deconvnet": Rule.DECONVNET, "guided-backprop": Rule.GUIDED, "gradient": Rule.GRADIENT}
_TILE = 48  # smallest side of a displayed patch, in pixels
_CHECKPOINTS = 10  # scan checkpoints per run


def _section(
    analysis: AnalysisSpec, records: dict[str, dict[str, Any]], ctx: JobContext, **extra: Any
) -> dict[str, Any]:
    ctx.timings.setdefault(analysis.id, {})["parts"] = {
        k: r.get("seconds") for k, r in records.items()
    }
    files = [item for record in records.values() for item in record["files"]]
    return {
        "kind": analysis.kind,
        "id": analysis.id,
        "options": analysis.options,
        "files": files,
        **extra,
    }


def _per_image_section(
    ctx: JobContext, analysis: AnalysisSpec, render: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    """Run `render` once per image of `analysis.options["images"]` (resumable parts keyed
    `image-<index>`) and table each part's data by image index."""
    keys = [f"image-{i}" for i in analysis.options["images"]]
    records = ctx.run_parts(analysis, keys, render)
    return _section(
        analysis,
        records,
        ctx,
        tables={str(r["data"]["image"]): r["data"] for r in records.values()},
    )


def _box(ctx: JobContext, layer: str, entry: Entry) -> tuple[int, int, int, int]:
    field = ctx.layers[layer].receptive_field
    if field is None:
        height, width = ctx.entry.input_shape[1:]
        return 0, 0, height, width
    return field.box(entry.y, entry.x)


def _entry_record(entry: Entry, label: str, box: tuple[int, int, int, int]) -> dict[str, Any]:
    return {
        "value": entry.value,
        "image": entry.image,
        "label": label,
        "y": entry.y,
        "x": entry.x,
        "box": list(box),
    }


def _blank(size: int) -> torch.Tensor:
    return torch.full((3, size, size), 0.5)


# -- ZF Fig. 2: maximal activations ---------------------------------------------------------


def _scan(
    ctx: JobContext, analysis: AnalysisSpec, layers: dict[str, list[int]], k: int
) -> dict[str, TopK]:
    """The merged top-k tables: from the finished file, or by (resuming) this rank's share of
    the scan and merging every rank's share."""
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    folder = ctx.state_dir / analysis.id
    final = folder / "topk.safetensors"
    if final.is_file():
        tensors = load_file(str(final))
        return {name: TopK.from_tensors(tensors, f"{name}/") for name in layers}
    start = time.perf_counter()
    ranks = ctx.ranks
    batches = batch_ranges(ctx.indices, ctx.spec.dataset.batch_size)
    mine = [b for b in range(len(batches)) if ranks.mine(b)]
    checkpoint = folder / f"scan-rank{ranks.rank}-of-{ranks.world}.safetensors"
    tops, done = None, 0
    if checkpoint.is_file():
        from safetensors import safe_open

        with safe_open(str(checkpoint), framework="pt") as handle:
            done = int(handle.metadata()["done"])
        tensors = load_file(str(checkpoint))
        tops = {name: TopK.from_tensors(tensors, f"{name}/") for name in layers}
    every = max(1, math.ceil(len(mine) / _CHECKPOINTS))
    progress = tqdm(
        total=len(mine),
        initial=done,
        desc=f"{analysis.id} scan",
        disable=not ctx.progress or None,
        leave=False,
    )
    counter = {"done": done}

    def save(tables: dict[str, TopK]) -> None:
        counter["done"] += 1
        progress.update(1)
        if counter["done"] % every == 0 or counter["done"] == len(mine):
            tensors = {
                k: v for name, top in tables.items() for k, v in top.to_tensors(f"{name}/").items()
            }
            with atomic_path(checkpoint) as tmp:
                save_file(tensors, str(tmp), metadata={"done": str(counter["done"])})

    todo = [batches[b] for b in mine[done:]]
    tops = scan_topk(
        ctx.model,
        layers,
        iterate_batches(ctx.dataset, todo, num_workers=ctx.spec.dataset.num_workers),
        k=k,
        tops=tops,
        after_batch=save,
    )
    progress.close()
    shares = ranks.all_gather(tops)
    merged = shares[0]
    for share in shares[1:]:
        merged = {name: merged[name].merge(share[name]) for name in layers}
    if ranks.is_main:
        tensors = {
            k: v for name, top in merged.items() for k, v in top.to_tensors(f"{name}/").items()
        }
        with atomic_path(final) as tmp:
            save_file(tensors, str(tmp))
    ranks.barrier()
    ctx.timings.setdefault(analysis.id, {})["scan_seconds"] = round(time.perf_counter() - start, 3)
    return merged


def _channel_figure(
    ctx: JobContext,
    layer: str,
    projections: list[torch.Tensor],
    images: list[torch.Tensor],
    entries: list[Entry],
    k: int,
) -> torch.Tensor:
    """3x3 (k) projections beside the matching receptive-field patches."""
    proj_tiles, patch_tiles = [], []
    for projection, image, entry in zip(projections, images, entries, strict=True):
        box = _box(ctx, layer, entry)
        proj_tiles.append(upscale(projection_rgb(crop_padded(projection.cpu(), box)), _TILE))
        patch_tiles.append(upscale(crop_padded(ctx.display(image), box), _TILE))
    size = proj_tiles[0].shape[-1] if proj_tiles else _TILE
    while len(proj_tiles) < k:
        proj_tiles.append(_blank(size))
        patch_tiles.append(_blank(size))
    nrow = math.ceil(math.sqrt(k))
    return side_by_side([tile_grid(proj_tiles, nrow), tile_grid(patch_tiles, nrow)], gap=6)


def max_activations(ctx: JobContext, analysis: AnalysisSpec) -> dict[str, Any]:
    opts = analysis.options
    layers: dict[str, list[int]] = opts["channels"]
    k = opts["top_k"]
    tops = _scan(ctx, analysis, layers, k)
    rule = _RULES[opts["projection"]]

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
            project_units(ctx.model, layer, images, units, rule=rule) if units else torch.empty(0)
        )
        files, data, figures = [], {}, []
        position = 0
        for channel, entries in zip(channels, table, strict=True):
            projections = [maps[position + i] for i in range(len(entries))]
            position += len(entries)
            pictures = [images[row_of[e.image]] for e in entries]
            figure = _channel_figure(ctx, layer, projections, pictures, entries, k)
            figures.append(figure)
            data[str(channel)] = [
                _entry_record(e, ctx.label_name(labels[row_of[e.image]]), _box(ctx, layer, e))
                for e in entries
            ]
            values = ", ".join(f"{e.value:.3g}" for e in entries)
            files.append(
                ctx.write_png(
                    figure,
                    f"{analysis.id}/{layer}/channel_{channel:04d}.png",
                    f"{layer} channel {channel}: top-{len(entries)} {opts['projection']} "
                    f"projections (left) and image patches (right); activations {values}",
                )
            )
        width = max(f.shape[-1] for f in figures)
        height = max(f.shape[-2] for f in figures)
        padded = [
            torch.nn.functional.pad(f, (0, width - f.shape[-1], 0, height - f.shape[-2]), value=1.0)
            for f in figures
        ]
        overview = tile_grid(padded, nrow=min(4, len(padded)), padding=10)
        files.insert(
            0,
            ctx.write_png(
                overview,
                f"{analysis.id}/{layer}.png",
                f"{layer}: channels {', '.join(map(str, channels))} "
                "(each: projections left, patches right)",
            ),
        )
        return {"files": files, "data": {"layer": layer, "channels": data}}

    records = ctx.run_parts(
        analysis, [f"layer-{name}" for name in layers], lambda key: render(key[len("layer-") :])
    )
    tables = {r["data"]["layer"]: r["data"]["channels"] for r in records.values()}
    return _section(analysis, records, ctx, tables=tables)


# -- AlexNet Fig. 3: first-layer filters ----------------------------------------------------


def filters(ctx: JobContext, analysis: AnalysisSpec) -> dict[str, Any]:
    layer = analysis.options["layer"]

    def render(key: str) -> dict[str, Any]:
        weight = ctx.model.get_submodule(layer).weight
        kernel = "x".join(map(str, weight.shape[1:]))
        caption = f"{layer}: {weight.shape[0]} kernels of {kernel}, each min-max normalised"
        return {
            "files": [ctx.write_png(filter_grid(weight), f"{analysis.id}/{layer}.png", caption)],
            "data": {"shape": list(weight.shape)},
        }

    records = ctx.run_parts(analysis, ["filters"], render)
    return _section(analysis, records, ctx)


# -- ZF Fig. 4: feature evolution during training --------------------------------------------


def evolution(ctx: JobContext, analysis: AnalysisSpec) -> dict[str, Any]:
    from safetensors.torch import load_file, save_file

    from cnnzoo import zoo
    from cnnzoo.zoo.checkpoints import list_epochs

    opts = analysis.options
    layer, channels = opts["layer"], opts["channels"]
    paths = dict(list_epochs(opts["checkpoints"]))
    indices = ctx.indices[: opts["subset"]]
    rule = _RULES[opts["projection"]]
    tiles_dir = ctx.state_dir / analysis.id

    def run_epoch(key: str) -> dict[str, Any]:
        epoch = int(key.split("-")[1])
        model = zoo.build_model(ctx.spec.model, weights=paths[epoch]).to(ctx.device).eval()
        batches = batch_ranges(indices, ctx.spec.dataset.batch_size)
        top = scan_topk(model, {layer: channels}, iterate_batches(ctx.dataset, batches), k=1)[layer]
        entries = [top.entries(row)[0] for row in range(len(channels))]
        wanted = sorted({e.image for e in entries})
        images, labels = ctx.images(wanted)
        units = [
            Unit(wanted.index(e.image), c, e.y, e.x) for c, e in zip(channels, entries, strict=True)
        ]
        maps = project_units(model, layer, images, units, rule=rule)
        tiles = torch.stack(
            [
                upscale(projection_rgb(crop_padded(m.cpu(), _box(ctx, layer, e))), _TILE)
                for m, e in zip(maps, entries, strict=True)
            ]
        )
        with atomic_path(tiles_dir / f"{key}.safetensors") as tmp:
            save_file({"tiles": tiles.contiguous()}, str(tmp))
        data = {
            str(c): _entry_record(
                e, ctx.label_name(labels[wanted.index(e.image)]), _box(ctx, layer, e)
            )
            for c, e in zip(channels, entries, strict=True)
        }
        return {"files": [], "data": {"epoch": epoch, "channels": data}}

    keys = [f"epoch-{e:03d}" for e in opts["epochs"]]
    records = ctx.run_parts(analysis, keys, run_epoch)
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
                f"{analysis.id}/{layer}.png",
                f"{layer} channels {', '.join(map(str, channels))} (rows): the strongest "
                f"activation's projection over {len(indices)} images at epochs "
                f"{', '.join(map(str, opts['epochs']))} (columns)",
            )
        )
    section = _section(
        analysis,
        records,
        ctx,
        tables={r["data"]["epoch"]: r["data"]["channels"] for r in records.values()},
    )
    section["files"] = files
    return section


# -- attribution overlays ---------------------------------------------------------------------

_SHOW = 128  # smallest side of a displayed image in overlays


def attributions(ctx: JobContext, analysis: AnalysisSpec) -> dict[str, Any]:
    from cnnzoo.interpret.explain import explain

    methods = analysis.options["methods"]

    def render(key: str) -> dict[str, Any]:
        index = int(key.split("-")[1])
        images, labels = ctx.images([index])
        panels = [upscale(ctx.display(images[0]), _SHOW)]
        results = {}
        for method in methods:
            result = explain(ctx.model, images[:1], method)
            shown = overlay(ctx.display(images[0]), torch.from_numpy(result.attribution))
            panels.append(upscale(shown, _SHOW))
            results[method] = {"target": result.target, "score": round(result.score, 6)}
        first = results[methods[0]]
        label = ctx.label_name(labels[0])
        caption = (
            f"image {index} (label {label}), predicted {ctx.entry.labels[first['target']]} "
            f"p={first['score']:.3f}: {' | '.join(methods)} (red: for the class, blue: against, "
            "over the dimmed image)"
        )
        return {
            "files": [
                ctx.write_png(side_by_side(panels), f"{analysis.id}/image_{index:05d}.png", caption)
            ],
            "data": {"image": index, "label": label, "methods": results},
        }

    return _per_image_section(ctx, analysis, render)


# -- ZF Fig. 7: occlusion -----------------------------------------------------------------------


def occlusion(ctx: JobContext, analysis: AnalysisSpec) -> dict[str, Any]:
    from cnnzoo.interpret.occlusion import occlusion_maps

    opts = analysis.options
    colours = label_colours(len(ctx.entry.labels))

    def render(key: str) -> dict[str, Any]:
        index = int(key.split("-")[1])
        images, labels = ctx.images([index])
        true_class = labels[0]
        maps = occlusion_maps(
            ctx.model,
            images[:1],
            true_class,
            opts["layer"],
            window=opts["window"],
            stride=opts["stride"],
        )
        size = tuple(images.shape[-2:])

        def grow(grid: torch.Tensor) -> torch.Tensor:
            big = torch.nn.functional.interpolate(grid[None].float(), size=size, mode="nearest")[0]
            return upscale(big, _SHOW)

        activation = maps.activation
        peak = float(activation.max())
        top_colours = colours[maps.top_label].permute(2, 0, 1)
        panels = [
            upscale(ctx.display(images[0]), _SHOW),
            grow(heat_rgb(activation, 0.0, peak if peak > 0 else 1.0)),
            grow(heat_rgb(maps.probability, 0.0, 1.0)),
            grow(top_colours),
        ]
        seen = sorted({int(c) for c in maps.top_label.flatten()})
        legend = ", ".join(
            f"{ctx.entry.labels[c]}=#{''.join(f'{int(v * 255):02x}' for v in colours[c])}"
            for c in seen
        )
        caption = (
            f"image {index} (true class {ctx.entry.labels[true_class]}), grey "
            f"{maps.window}px square in steps of {maps.stride}px: image | {opts['layer']} map "
            f"{maps.feature_channel} total activation | p(true class) (black 0 .. white 1) | "
            f"top label ({legend})"
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
        return {
            "files": [
                ctx.write_png(side_by_side(panels), f"{analysis.id}/image_{index:05d}.png", caption)
            ],
            "data": data,
        }

    return _per_image_section(ctx, analysis, render)


# -- Adebayo et al. 2018: cascading model randomisation ----------------------------------------


def randomisation(ctx: JobContext, analysis: AnalysisSpec) -> dict[str, Any]:
    from cnnzoo.interpret.sanity import cascading_randomisation

    opts = analysis.options

    def run(key: str) -> dict[str, Any]:
        images, _ = ctx.images(opts["images"])
        rules = [_RULES[m] for m in opts["methods"]]
        result = cascading_randomisation(
            ctx.model, images, opts["layers"], rules, seed=opts["seed"]
        )
        files = []
        for row, index in enumerate(opts["images"][:4]):
            tiles = [
                upscale(attribution_rgb(result.maps[m][stage, row]), _TILE * 2)
                for m in opts["methods"]
                for stage in range(len(result.stages))
            ]
            picture = side_by_side(
                [upscale(ctx.display(images[row]), _TILE * 2), tile_grid(tiles, len(result.stages))]
            )
            stages = " | ".join(result.stages)
            files.append(
                ctx.write_png(
                    picture,
                    f"{analysis.id}/image_{index:05d}.png",
                    f"image {index}: rows {', '.join(opts['methods'])}; columns: {stages} "
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
        return {"files": files, "data": {"stages": list(result.stages), "correlation": correlation}}

    records = ctx.run_parts(analysis, ["check"], run)
    return _section(analysis, records, ctx, tables=records["check"]["data"])


RUNNERS: dict[str, Callable[[JobContext, AnalysisSpec], dict[str, Any]]] = {
    "max-activations": max_activations,
    "filters": filters,
    "evolution": evolution,
    "attributions": attributions,
    "occlusion": occlusion,
    "randomisation": randomisation,
}
