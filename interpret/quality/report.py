"""All the figures for some methods' maps of some images: `evaluate` computes them per image,
`summarise` averages them into one row per method, `reading` says in words what the rows show.

`evaluate` is what a server calls (maps, a model callable and settings in, figures out): it
needs nothing but numpy arrays and callables, and computes the sanity checks only when given
the explainers (random logit) and the randomisation stages (MPRT) to run them with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnzoo.interpret.quality.baselines import BASELINES, baseline_explainer
from cnnzoo.interpret.quality.confidence import ConfidenceChange, confidence_change
from cnnzoo.interpret.quality.curves import Curve, Curves, perturbation_curves, predict
from cnnzoo.interpret.quality.sanity import (
    Randomisation,
    Stages,
    model_randomisation,
    other_classes,
    random_logit,
)
from cnnzoo.interpret.quality.settings import Explainer, Model, QualitySettings, softmax
from cnnzoo.interpret.quality.similarity import Similarity

__all__ = [
    "MEASURES",
    "MPRT_LIMIT",
    "RANDOM_LOGIT_LIMIT",
    "MethodQuality",
    "concatenate",
    "evaluate",
    "reading",
    "summarise",
    "table_text",
]

MEASURES = ("rank_abs", "rank_signed", "ssim")
# A method fails MPRT when its maps keep at least this SSIM (on average) with the trained
# model's once the top layer (the one that computes the class scores) is random: they do not
# depend on what that layer learnt. Guided backprop keeps about 0.9 on LeNet-5 and ResNet-20,
# the gradient, Grad-CAM and occlusion 0.2 to 0.45 (Adebayo et al. 2018, Fig. 2).
MPRT_LIMIT = 0.75
# A method fails the random-logit check when its map of another class keeps at least this SSIM
# with its map of the explained class on average: the map does not depend on the class.
RANDOM_LOGIT_LIMIT = 0.75


@dataclass
class MethodQuality:
    """One method's figures, per image.

    Attributes:
        method: the method (or baseline) name.
        curves: filling -> deletion and insertion curves of every image.
        confidence: Average Drop's and Increase in Confidence's terms per image.
        randomisation: MPRT of the first `sanity` images, if run.
        random_logit: random-logit similarities of the first `sanity` images, if run.
    """

    method: str
    curves: dict[str, Curves]
    confidence: ConfidenceChange
    randomisation: Randomisation | None = None
    random_logit: Similarity | None = None

    @property
    def images(self) -> int:
        return len(self.confidence.drop)

    def to_json(self, digits: int = 6) -> dict[str, Any]:
        """Plain lists (rounded to `digits`), to store and to read back with `from_json`."""

        def r(a: np.ndarray) -> Any:
            return np.round(np.asarray(a, dtype=np.float64), digits).tolist()

        def sim(s: Similarity) -> dict[str, Any]:
            return {m: r(getattr(s, m)) for m in MEASURES}

        out: dict[str, Any] = {
            "method": self.method,
            "curves": {
                f: {
                    kind: {"probability": r(c.probability), "hit": c.hit.astype(int).tolist()}
                    for kind, c in (("deletion", cs.deletion), ("insertion", cs.insertion))
                }
                for f, cs in self.curves.items()
            },
            "confidence": {
                "drop": r(self.confidence.drop),
                "increase": self.confidence.increase.astype(int).tolist(),
            },
        }
        if self.randomisation is not None:
            out["randomisation"] = {
                "stages": list(self.randomisation.stages),
                "similarity": [sim(s) for s in self.randomisation.similarity],
            }
        if self.random_logit is not None:
            out["random_logit"] = sim(self.random_logit)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MethodQuality:
        def curve(d: Mapping[str, Any]) -> Curve:
            return Curve(
                probability=np.array(d["probability"], dtype=np.float64).reshape(
                    len(d["probability"]), -1
                ),
                hit=np.array(d["hit"], dtype=bool).reshape(len(d["hit"]), -1),
            )

        def sim(d: Mapping[str, Any]) -> Similarity:
            return Similarity(**{m: np.array(d[m], dtype=np.float64) for m in MEASURES})

        randomisation = None
        if "randomisation" in data:
            randomisation = Randomisation(
                stages=tuple(data["randomisation"]["stages"]),
                similarity=tuple(sim(s) for s in data["randomisation"]["similarity"]),
            )
        return cls(
            method=data["method"],
            curves={
                f: Curves(deletion=curve(c["deletion"]), insertion=curve(c["insertion"]))
                for f, c in data["curves"].items()
            },
            confidence=ConfidenceChange(
                drop=np.array(data["confidence"]["drop"], dtype=np.float64),
                increase=np.array(data["confidence"]["increase"], dtype=bool),
            ),
            randomisation=randomisation,
            random_logit=sim(data["random_logit"]) if "random_logit" in data else None,
        )


def evaluate(
    model: Model,
    images: np.ndarray,
    targets: np.ndarray,
    maps: Mapping[str, np.ndarray],
    settings: QualitySettings | None = None,
    *,
    explainers: Mapping[str, Explainer] | None = None,
    stages: Stages | None = None,
    sanity: int | None = None,
    baselines: Sequence[str] = BASELINES,
    ids: Sequence[int] | np.ndarray | None = None,
) -> dict[str, MethodQuality]:
    """Every figure of every method's maps, per image.

    Args:
        model: images `[N, C, H, W]` float32 -> logits `[N, K]`.
        images: the model inputs.
        targets: `[N]` the class each map explains.
        maps: method -> `[N, H, W]` its maps.
        settings: see `QualitySettings` (default: its defaults).
        explainers: method -> explainer of the model, for the random-logit check (left out:
            no random-logit check).
        stages: the MPRT stages (see `cnnzoo.interpret.quality.sanity.Stages`; left out: no
            MPRT); each stage's explainers cover the methods of `maps`.
        sanity: how many of the images (the first ones) the randomisation checks use (default:
            all).
        baselines: baselines to add as methods ("random", "edges"), with their own maps.
        ids: a stable id per image (its dataset index): seeds ROAD's noise and the random
            logit's class (default: the image's position).

    Returns:
        method -> its figures, the methods of `maps` first, then the baselines.
    """
    settings = settings or QualitySettings()
    x = np.asarray(images, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.int64)
    n = len(x)
    ids = np.arange(n) if ids is None else np.asarray(ids, dtype=np.int64)
    controls = {name: baseline_explainer(name, settings.seed) for name in baselines}
    all_maps = {m: np.asarray(v, dtype=np.float64) for m, v in maps.items()}
    all_maps.update({name: explain(x, targets) for name, explain in controls.items()})
    logits = predict(model, x, settings.batch_size)
    probability = softmax(logits)[np.arange(n), targets]
    original = (probability, logits.argmax(axis=1) == targets)
    curves = {
        filling: perturbation_curves(
            model, x, targets, all_maps, settings, filling, ids=ids, original=original
        )
        for filling in settings.fillings
    }
    results = {
        method: MethodQuality(
            method=method,
            curves={f: curves[f][method] for f in settings.fillings},
            confidence=confidence_change(model, x, targets, m, probability, settings.batch_size),
        )
        for method, m in all_maps.items()
    }
    count = n if sanity is None else max(0, min(sanity, n))
    if count and explainers is not None:
        everyone = {**explainers, **controls}
        others = other_classes(targets[:count], logits.shape[1], ids[:count], settings.seed)
        first = {m: v[:count] for m, v in all_maps.items()}
        for method, found in random_logit(everyone, x[:count], others, first).items():
            results[method].random_logit = found
    if count and stages is not None:
        first = {m: v[:count] for m, v in all_maps.items()}
        with_controls = ((name, {**ex, **controls}) for name, ex in stages)
        for method, found in model_randomisation(
            with_controls, x[:count], targets[:count], first
        ).items():
            results[method].randomisation = found
    return results


def concatenate(parts: Sequence[MethodQuality]) -> MethodQuality:
    """One method's figures of several batches of images, in order (sanity checks only of the
    parts that ran them)."""

    def cat_curve(cs: Sequence[Curve]) -> Curve:
        return Curve(
            probability=np.concatenate([c.probability for c in cs]),
            hit=np.concatenate([c.hit for c in cs]),
        )

    def cat_sim(ss: Sequence[Similarity]) -> Similarity:
        return Similarity(**{m: np.concatenate([getattr(s, m) for s in ss]) for m in MEASURES})

    first = parts[0]
    randomised = [p.randomisation for p in parts if p.randomisation is not None]
    logit = [p.random_logit for p in parts if p.random_logit is not None]
    randomisation = None
    if randomised:
        randomisation = Randomisation(
            stages=randomised[0].stages,
            similarity=tuple(
                cat_sim([r.similarity[s] for r in randomised])
                for s in range(len(randomised[0].stages))
            ),
        )
    return MethodQuality(
        method=first.method,
        curves={
            f: Curves(
                deletion=cat_curve([p.curves[f].deletion for p in parts]),
                insertion=cat_curve([p.curves[f].insertion for p in parts]),
            )
            for f in first.curves
        },
        confidence=ConfidenceChange(
            drop=np.concatenate([p.confidence.drop for p in parts]),
            increase=np.concatenate([p.confidence.increase for p in parts]),
        ),
        randomisation=randomisation,
        random_logit=cat_sim(logit) if logit else None,
    )


def _mean_sem(values: np.ndarray) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    sem = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), sem


@dataclass
class Row:
    """One method's averages: `values` keyed by column name (see `summarise`), the mean curves
    (filling -> kind -> `[steps + 1]` probability and hit rate) and MPRT's mean per stage."""

    method: str
    baseline: bool
    values: dict[str, float] = field(default_factory=dict)
    curves: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)
    per_stage: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "baseline": self.baseline,
            **{k: _round(v) for k, v in self.values.items()},
            "curves": self.curves,
            "stages": self.stages,
            "per_stage": self.per_stage,
        }


def _round(v: float, digits: int = 6) -> float | None:
    return None if not np.isfinite(v) else round(float(v), digits)


def summarise(results: Mapping[str, MethodQuality]) -> list[Row]:
    """One row per method (in the order given): mean and standard error of the mean of each
    area, the ROAD/mean difference of insertion and deletion areas, Average Drop (%), Increase
    in Confidence (%), MPRT's similarities with the top layer and with every layer randomised,
    and the random-logit similarities; plus the mean curves and MPRT's mean per stage."""
    rows = []
    for method, q in results.items():
        row = Row(method=method, baseline=method in BASELINES)
        row.values["images"] = float(q.images)
        for f, cs in q.curves.items():
            deletion, insertion = cs.deletion.area(), cs.insertion.area()
            for name, v in (
                (f"deletion_{f}", deletion),
                (f"insertion_{f}", insertion),
                (f"difference_{f}", insertion - deletion),
            ):
                row.values[name], row.values[f"{name}_sem"] = _mean_sem(v)
            row.curves[f] = {
                kind: {
                    "probability": np.round(c.probability.mean(axis=0), 6).tolist(),
                    "hit": np.round(c.hit.mean(axis=0), 6).tolist(),
                }
                for kind, c in (("deletion", cs.deletion), ("insertion", cs.insertion))
            }
        row.values["average_drop"] = 100 * float(q.confidence.drop.mean())
        row.values["increase"] = 100 * float(q.confidence.increase.mean())
        if q.randomisation is not None and q.randomisation.stages:
            r = q.randomisation
            row.values["sanity_images"] = float(len(r.similarity[0].ssim))
            row.stages = list(r.stages)
            for measure in MEASURES:
                per_stage = r.per_stage(measure).mean(axis=1)
                row.per_stage[measure] = np.round(per_stage, 6).tolist()
                row.values[f"mprt_{measure}_top"] = float(per_stage[0])
                row.values[f"mprt_{measure}_all"] = float(per_stage[-1])
        if q.random_logit is not None:
            row.values["sanity_images"] = float(len(q.random_logit.ssim))
            for measure in MEASURES:
                row.values[f"logit_{measure}"] = float(getattr(q.random_logit, measure).mean())
        rows.append(row)
    return rows


def _faithfulness_key(rows: Sequence[Row]) -> str | None:
    for f in ("road", "mean"):
        if all(f"difference_{f}" in r.values for r in rows):
            return f
    return None


def reading(rows: Sequence[Row], model: str = "this model") -> list[str]:
    """A few sentences on what the table shows: which method is most faithful, which do no
    better than the random map, which fail the sanity checks."""
    lines = []
    methods = [r for r in rows if not r.baseline]
    random = next((r for r in rows if r.method == "random"), None)
    f = _faithfulness_key(rows)
    if len(methods) > 1 and f is not None:
        filling = "ROAD imputation" if f == "road" else "the mean colour"
        best = max(methods, key=lambda r: r.values[f"difference_{f}"])
        lines.append(
            f"Most faithful on {model}: {best.method} (insertion minus deletion area "
            f"{best.values[f'difference_{f}']:.3f} with {filling}; deletion "
            f"{best.values[f'deletion_{f}']:.3f}, insertion {best.values[f'insertion_{f}']:.3f})."
        )
    if methods and f is not None and random is not None:
        level = random.values[f"deletion_{f}"]
        worse = [r.method for r in methods if r.values[f"deletion_{f}"] >= level]
        if worse:
            lines.append(
                f"No better than a random map on deletion ({level:.3f}): {', '.join(worse)}."
            )
        elif len(methods) > 1:
            lines.append(
                f"Every method removes the evidence faster than a random map "
                f"(deletion area {level:.3f})."
            )
        else:
            lines.append(
                f"{methods[0].method} removes the evidence faster than a random map "
                f"(deletion area {methods[0].values[f'deletion_{f}']:.3f} against {level:.3f})."
            )
    checked = [r for r in methods if "mprt_ssim_top" in r.values]
    if checked:
        failing = [r for r in checked if r.values["mprt_ssim_top"] >= MPRT_LIMIT]
        detail = ", ".join(f"{r.method} {r.values['mprt_ssim_top']:.2f}" for r in failing)
        lines.append(
            f"Failing the model-randomisation check (SSIM >= {MPRT_LIMIT} with the trained model's "
            f"maps once the top layer is random): {detail}; read such maps as image structure, "
            "not as what the model learnt."
            if failing
            else "The maps change once the top layer is randomised (MPRT)."
        )
    checked = [r for r in methods if "logit_ssim" in r.values]
    if checked:
        failing = [r for r in checked if r.values["logit_ssim"] >= RANDOM_LOGIT_LIMIT]
        detail = ", ".join(f"{r.method} {r.values['logit_ssim']:.2f}" for r in failing)
        lines.append(
            f"Failing the random-logit check (SSIM >= {RANDOM_LOGIT_LIMIT} between the maps of the "
            f"explained class and another class): {detail}; such maps barely depend on the class."
            if failing
            else "The maps change with the class explained (random logit)."
        )
    return lines


_TEXT_COLUMNS = (
    ("deletion_mean", "deletion", "mean"),
    ("deletion_road", "deletion", "ROAD"),
    ("insertion_mean", "insertion", "mean"),
    ("insertion_road", "insertion", "ROAD"),
    ("average_drop", "Average", "Drop %"),
    ("mprt_ssim_top", "MPRT SSIM", "top layer"),
    ("mprt_ssim_all", "MPRT SSIM", "all layers"),
    ("logit_ssim", "random logit", "SSIM"),
)


def table_text(rows: Sequence[Row]) -> str:
    """The main columns of the rows as a plain-text table (two header lines), for terminals."""
    columns = [c for c in _TEXT_COLUMNS if any(c[0] in r.values for r in rows)]
    width = max([len("method"), *(len(r.method) for r in rows)])
    cells = [[c[1] for c in columns], [c[2] for c in columns]]
    for row in rows:
        cells.append([f"{row.values[c[0]]:.3f}" if c[0] in row.values else "-" for c in columns])
    sizes = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    names = ["method", "", *(r.method for r in rows)]
    return "\n".join(
        "  ".join(
            [name.ljust(width), *(cell.rjust(size) for cell, size in zip(line, sizes, strict=True))]
        ).rstrip()
        for name, line in zip(names, cells, strict=True)
    )
