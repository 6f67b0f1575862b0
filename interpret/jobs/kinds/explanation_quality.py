"""`explanation-quality`: how trustworthy each method's maps are on this model and data.

For N images of the job's dataset and each method (plus a random map and an edge detector as
baselines): deletion and insertion curves and their areas with two fillings (the mean colour,
ROAD's noisy linear imputation), Average Drop and Increase in Confidence, and on the first
`sanity_images` images the randomisation checks (MPRT from the top layer down, random logit);
see `cnnzoo.interpret.quality`. Writes a table (`quality.json`, `quality.csv`, one row per
method; `per_image.csv`), the curves as plots and a short reading of the results.

Options (job file):
    images         how many of the job's images (the first ones; default 100) or a list of
                   dataset indices
    methods        any of `cnnzoo.interpret.methods.METHODS` (default: all of them)
    baselines      any of random, edges (default both; [] for none)
    target         predicted | label: the class explained (default predicted)
    steps          steps of each deletion/insertion curve (default 16)
    region         side of the square regions removed together, in pixels (default 1)
    fillings       any of mean, road (default both)
    noise          ROAD's noise, in model-input units (default 0.01)
    sanity_images  images the randomisation checks use (default 32; 0 skips them)
    randomise      MPRT's layers, top first (default: every convolution and linear layer)
    layer          Grad-CAM's layer (default: the last spatial layer that runs once)
    batch_size     model inputs per call: the bound on the metrics' memory (default 256)
    seed           seeds ROAD's noise, the random map, the random logit's class and the
                   randomised weights (default 0)
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from cnnzoo.errors import InvalidInput, JobFileError
from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.context import JobContext
from cnnzoo.interpret.jobs.limits import MAX_QUALITY_IMAGES, at_most, batch_limit
from cnnzoo.interpret.jobs.options import (
    OptionError,
    Options,
    count,
    index_list,
    name_list,
    one_of,
    option,
    positive,
    random_seed,
    real,
    some_of,
    text,
)
from cnnzoo.interpret.jobs.site import INDEX, Page, analysis_page
from cnnzoo.interpret.jobs.world import World
from cnnzoo.interpret.methods import METHODS
from cnnzoo.interpret.quality.baselines import BASELINES
from cnnzoo.interpret.quality.plots import curves_png, randomisation_png
from cnnzoo.interpret.quality.report import (
    MEASURES,
    MethodQuality,
    Row,
    concatenate,
    evaluate,
    reading,
    summarise,
)
from cnnzoo.interpret.quality.settings import FILLINGS, MAX_STEPS, Model, QualitySettings
from cnnzoo.interpret.torch_backend import (
    explainer,
    explainer_warnings,
    method_maps,
    model_callable,
    onnx_model_callable,
    randomisation_stages,
    takes_layer,
)

__all__ = ["ExplanationQuality", "ExplanationQualityOptions"]

_PART = 64  # images per resumable part


def _count_or_indices(value: Any) -> int | tuple[int, ...]:
    """How many images (the first ones) or which."""
    if isinstance(value, int) and not isinstance(value, bool):
        return positive(value)
    if isinstance(value, list):
        return index_list(value)
    raise OptionError(f"must be a number of images or a list of dataset indices, got {value!r}")


def _some_or_none(choices: tuple[str, ...], what: str) -> Any:
    def check(value: Any) -> tuple[str, ...]:
        if value == []:
            return ()
        return some_of(choices, what)(value)

    return check


@dataclass(frozen=True)
class ExplanationQualityOptions(Options):
    images: Any = option(100, _count_or_indices)  # resolved: (dataset index, ...)
    methods: tuple[str, ...] = option(METHODS, some_of(METHODS, "methods"))
    baselines: tuple[str, ...] = option(BASELINES, _some_or_none(BASELINES, "baselines"))
    target: str = option("predicted", one_of(("predicted", "label")))
    steps: int = option(16, positive)
    region: int = option(1, positive)
    fillings: tuple[str, ...] = option(FILLINGS, some_of(FILLINGS, "fillings"))
    noise: float = option(0.01, real(0.0, 1.0))
    sanity_images: int = option(32, count)
    randomise: tuple[str, ...] | None = option(None, name_list)
    layer: str | None = option(None, text)
    batch_size: int = option(256, positive)
    seed: int = option(0, random_seed)

    def settings(self) -> QualitySettings:
        return QualitySettings(
            steps=self.steps,
            region=self.region,
            fillings=self.fillings,
            noise=self.noise,
            batch_size=self.batch_size,
            seed=self.seed,
        )


class ExplanationQuality(Analysis[ExplanationQualityOptions]):
    kind = "explanation-quality"
    title = "Explanation quality: faithfulness and sanity checks per method"
    Options = ExplanationQualityOptions

    def resolve_options(self, world: World) -> ExplanationQualityOptions:
        opts, where = self.options, self.where
        wanted = opts.images
        if isinstance(wanted, int):
            wanted = tuple(range(min(wanted, world.images)))
        images = world.image_indices(f"{where}: images", wanted, MAX_QUALITY_IMAGES)
        shape = tuple(world.entry.input_shape)
        limit = batch_limit(shape)
        at_most(where, "batch_size", opts.batch_size, limit, f"{limit} images of {shape} fit")
        at_most(where, "steps", opts.steps, MAX_STEPS, "points per curve")
        try:
            opts.settings().check_image(*shape[1:])
        except InvalidInput as err:  # say which analysis
            raise JobFileError(f"{where}: {err.reason}") from None
        weighted = world.of_kind("Conv2d", "Linear")
        randomise = opts.randomise if opts.randomise is not None else tuple(weighted[::-1])
        for name in randomise:
            world.layer(f"{where}: randomise", name, world.randomisable)
        layer = world.method_layer(where, opts.layer, opts.methods)
        world.check_methods(where, opts.methods, layer)
        return replace(
            opts,
            images=images,
            sanity_images=min(opts.sanity_images, len(images)),
            randomise=tuple(randomise),
        )

    def run(self, ctx: JobContext) -> dict[str, Any]:
        images = list(self.options.images)
        keys = [f"images-{start:05d}" for start in range(0, len(images), _PART)]
        made: list[Model] = []  # the model calls, made by the first part this run evaluates
        records = ctx.run_parts(
            self.id, keys, lambda key: self._evaluate_part(ctx, int(key.split("-")[1]), made)
        )
        parts = [records[key]["data"] for key in keys]
        order = [*self.options.methods, *self.options.baselines]  # stored sorted by name
        results = {
            method: concatenate([MethodQuality.from_json(p["methods"][method]) for p in parts])
            for method in order
        }
        rows = summarise(results)
        model = ctx.world.entry.name
        lines = reading(rows, model)
        files = self._write_results(ctx, rows, lines, parts) if ctx.ranks.is_main else []
        warnings = [w for m in self.options.methods for w in explainer_warnings(ctx.model, m)]
        section = self.section(
            ctx,
            records,
            warnings=warnings,
            tables={"rows": [_table_row(r) for r in rows], "reading": lines},
        )
        section["files"] = files
        return section

    def _evaluate_part(self, ctx: JobContext, start: int, made: list[Model]) -> dict[str, Any]:
        """The figures of images `start` to `start + 63` (by position in `images`); `made`
        holds the run's model calls once the first part has made them."""
        opts = self.options
        indices = list(opts.images[start : start + _PART])
        tensors, labels = ctx.images(indices)
        x = tensors.detach().float().cpu().numpy()
        if not made:  # on ONNX Runtime where the model exports, else on PyTorch
            made.append(onnx_model_callable(ctx.model, x) or model_callable(ctx.model))
        forward = made[0]
        if opts.target == "label":
            targets = np.asarray(labels, dtype=np.int64)
        else:
            targets = forward(x).argmax(axis=1).astype(np.int64)
        layer = {"layer": opts.layer} if opts.layer else {}
        maps = method_maps(ctx.model, opts.methods, x, targets, **layer)
        sanity = max(0, min(opts.sanity_images - start, len(indices)))
        stages = None
        if sanity and opts.randomise:
            stages = randomisation_stages(
                ctx.model, opts.methods, opts.randomise, seed=opts.seed, layer=opts.layer
            )
        explainers = {
            m: explainer(ctx.model, m, layer=opts.layer if takes_layer(m) else None)
            for m in opts.methods
        }
        results = evaluate(
            forward,
            x,
            targets,
            maps,
            opts.settings(),
            explainers=explainers if sanity else None,
            stages=stages,
            sanity=sanity,
            baselines=opts.baselines,
            ids=indices,
        )
        return {
            "files": [],
            "data": {
                "images": indices,
                "labels": [int(v) for v in labels],
                "targets": targets.tolist(),
                "methods": {m: q.to_json() for m, q in results.items()},
                "model_runtime": getattr(forward, "runtime", "torch"),
            },
        }

    def _write_results(
        self,
        ctx: JobContext,
        rows: list[Row],
        lines: list[str],
        parts: list[dict[str, Any]],
    ) -> list[dict[str, str]]:
        """The table (JSON, CSV), the per-image CSV and the plots."""
        opts = self.options
        model = ctx.world.entry.name
        folder = self.id
        summary = {
            "model": model,
            "images": len(opts.images),
            "sanity_images": opts.sanity_images,
            # where the faithfulness metrics ran the model (onnxruntime, else torch)
            "model_runtime": sorted({p.get("model_runtime", "torch") for p in parts}),
            "settings": self.options.to_dict(),
            "rows": [r.to_json() for r in rows],
            "reading": lines,
        }
        files = [
            ctx.write_file(
                (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode(),
                f"{folder}/quality.json",
                "every figure per method, the mean curves and MPRT per layer (JSON)",
            ),
            ctx.write_file(
                _csv([_table_row(r) for r in rows]),
                f"{folder}/quality.csv",
                "one row per method (CSV)",
            ),
            ctx.write_file(
                _csv(_per_image(parts, [r.method for r in rows])),
                f"{folder}/per_image.csv",
                "one row per image and method",
            ),
        ]
        for filling in opts.fillings:
            files.append(
                ctx.write_file(
                    curves_png(rows, filling, model),
                    f"{folder}/curves_{filling}.png",
                    f"mean deletion and insertion curves, {filling} filling, over "
                    f"{len(opts.images)} images (area in brackets)",
                )
            )
        if any(r.stages for r in rows):
            files.append(
                ctx.write_file(
                    randomisation_png(rows, model),
                    f"{folder}/randomisation.png",
                    f"model parameter randomisation over {opts.sanity_images} images: mean "
                    "similarity with the trained model's maps, layers randomised cumulatively "
                    "from the top",
                )
            )
        return files

    @classmethod
    def pages(cls, section: dict[str, Any], manifest: dict[str, Any]) -> list[Page]:
        """One page: the reading, the table, the plots and links to the tables' files."""
        tables = section["tables"]
        rows = tables["rows"]
        return [
            Page(
                path=analysis_page(section["id"]),
                template="quality.html",
                title=section["title"],
                trail=[("overview", INDEX)],
                context={
                    "options": section["options"],
                    "reading": tables["reading"],
                    "columns": _columns(rows),
                    "rows": rows,
                    "pictures": [f for f in section["files"] if f["path"].endswith(".png")],
                    "downloads": [f for f in section["files"] if not f["path"].endswith(".png")],
                    "warnings": section["warnings"],
                },
            )
        ]


_COLUMN_TITLES = {
    "deletion": "deletion area (lower is better)",
    "insertion": "insertion area (higher is better)",
    "difference": "insertion - deletion",
}


def _table_row(row: Row) -> dict[str, Any]:
    """A row of the table as the manifest, the CSV and the page show it."""
    values = {
        k: (None if not np.isfinite(v) else round(float(v), 4)) for k, v in row.values.items()
    }
    values["images"] = int(row.values["images"])
    if "sanity_images" in row.values:
        values["sanity_images"] = int(row.values["sanity_images"])
    return {"method": row.method, "baseline": row.baseline, **values}


def _columns(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The page's columns that some row has: (key, heading)."""
    keys: list[tuple[str, str]] = []
    for filling in FILLINGS:
        for kind in ("deletion", "insertion", "difference"):
            keys.append((f"{kind}_{filling}", f"{_COLUMN_TITLES[kind]}, {filling}"))
    keys += [
        ("average_drop", "Average Drop % (lower is better)"),
        ("increase", "Increase in Confidence %"),
    ]
    for measure in MEASURES:
        keys.append((f"mprt_{measure}_top", f"MPRT {measure}, top layer random"))
        keys.append((f"mprt_{measure}_all", f"MPRT {measure}, every layer random"))
    for measure in MEASURES:
        keys.append((f"logit_{measure}", f"random logit {measure}"))
    present = {k for row in rows for k, v in row.items() if v is not None}
    return [{"key": k, "title": t} for k, t in keys if k in present]


def _csv(rows: list[dict[str, Any]]) -> bytes:
    """Rows of dicts as CSV (columns in first-seen order)."""
    fields: dict[str, None] = {}
    for row in rows:
        fields.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _per_image(parts: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """One row per image and method: the areas, Average Drop's term and, where the image went
    through the sanity checks, the similarities with every layer random and for another class."""
    out = []
    for part in parts:
        for method in order:
            q = MethodQuality.from_json(part["methods"][method])
            areas = {
                f"{kind}_{f}": getattr(cs, kind).area()
                for f, cs in q.curves.items()
                for kind in ("deletion", "insertion")
            }
            for i, index in enumerate(part["images"]):
                row: dict[str, Any] = {
                    "image": index,
                    "label": part["labels"][i],
                    "target": part["targets"][i],
                    "method": method,
                    **{k: round(float(v[i]), 6) for k, v in areas.items()},
                    "drop": round(float(q.confidence.drop[i]), 6),
                    "increase": int(q.confidence.increase[i]),
                }
                if q.randomisation is not None and i < len(q.randomisation.similarity[-1].ssim):
                    last = q.randomisation.similarity[-1]
                    for measure in MEASURES:
                        row[f"mprt_{measure}_all"] = round(float(getattr(last, measure)[i]), 6)
                if q.random_logit is not None and i < len(q.random_logit.ssim):
                    for measure in MEASURES:
                        row[f"logit_{measure}"] = round(
                            float(getattr(q.random_logit, measure)[i]), 6
                        )
                out.append(row)
    return out
