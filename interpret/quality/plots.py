"""The curves of `summarise`'s rows as PNG plots (matplotlib, Agg), byte-identical for the same
rows: no timestamps or version strings in the files."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display; before pyplot is imported anywhere in this process
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cnnzoo.interpret.quality.report import MEASURES, Row  # noqa: E402

__all__ = ["curves_png", "randomisation_png"]

_MEASURE_TITLES = {
    "rank_abs": "rank correlation of |map|",
    "rank_signed": "signed rank correlation",
    "ssim": "SSIM",
}
_FILLING_TITLES = {"mean": "filled with the mean", "road": "ROAD imputation"}


def _style(row: Row) -> dict[str, object]:
    return (
        {"linestyle": "--", "color": "0.5" if row.method == "random" else "0.25"}
        if (row.baseline)
        else {}
    )


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def curves_png(rows: Sequence[Row], filling: str, model: str) -> bytes:
    """Mean deletion and insertion curves of every method with one filling, side by side."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for row in rows:
            points = row.curves[filling][kind]["probability"]
            fractions = [i / (len(points) - 1) for i in range(len(points))]
            area = row.values[f"{kind}_{filling}"]
            ax.plot(fractions, points, label=f"{row.method} ({area:.3f})", **_style(row))
        ax.set_title(f"{kind}, {_FILLING_TITLES[filling]}")
        ax.set_xlabel(f"fraction of the pixels {'removed' if kind == 'deletion' else 'restored'}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="method (area)", title_fontsize=8)
    axes[0].set_ylabel("probability of the explained class")
    figure.suptitle(f"{model}: mean over images (deletion: lower is better; insertion: higher)")
    figure.tight_layout()
    return _png(figure)


def randomisation_png(rows: Sequence[Row], model: str) -> bytes:
    """MPRT: each method's mean similarity with the trained model's maps as the layers are
    randomised from the top down, one panel per measure."""
    checked = [r for r in rows if r.stages]
    figure, axes = plt.subplots(1, len(MEASURES), figsize=(15, 4.6), sharey=True)
    stages = checked[0].stages if checked else []
    for ax, measure in zip(axes, MEASURES, strict=True):
        for row in checked:
            ax.plot(range(len(stages)), row.per_stage[measure], marker="o", ms=3,
                    label=row.method, **_style(row))  # fmt: skip
        ax.set_title(_MEASURE_TITLES[measure])
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels(stages, rotation=90, fontsize=7)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="0.7", linewidth=0.8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("similarity with the trained model's map")
    axes[-1].legend(fontsize=8)
    figure.suptitle(
        f"{model}: model parameter randomisation, cumulatively from the top layer (left) down; "
        "a map that explains the model falls toward 0"
    )
    figure.tight_layout()
    return _png(figure)
