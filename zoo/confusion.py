"""The confusion matrix of an evaluation: per-class precision and recall, and a picture of it.

`matrix[t][p]` counts the test images of class t the model called p. Recall of a class is its
diagonal over its row (the per-class accuracy), precision its diagonal over its column; a class
with no image (or never predicted) has None. `draw_confusion` writes the matrix as a PNG with
Pillow: each row normalised by its class's size, darker for more, the counts written in the
cells when they fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnzoo.fileio import atomic_path

__all__ = ["CARD_MATRIX_CLASSES", "draw_confusion", "precision_recall"]

# Cards carry the matrix up to this many classes (1000 ImageNet classes: a million numbers).
CARD_MATRIX_CLASSES = 100
_LABEL_CHARS = 14


def precision_recall(
    matrix: Sequence[Sequence[int]], labels: Sequence[str]
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """({label: precision}, {label: recall}) of a confusion matrix (rows: true classes)."""
    size = len(labels)
    rows = [sum(matrix[t]) for t in range(size)]
    columns = [sum(matrix[t][p] for t in range(size)) for p in range(size)]
    precision = {
        label: matrix[i][i] / columns[i] if columns[i] else None for i, label in enumerate(labels)
    }
    recall = {label: matrix[i][i] / rows[i] if rows[i] else None for i, label in enumerate(labels)}
    return precision, recall


def draw_confusion(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str = ""
) -> Path:
    """Write the matrix as a PNG at `path` (atomically); returns `path`."""
    from PIL import Image, ImageDraw, ImageFont

    size = len(labels)
    cell = max(2, min(40, 800 // max(size, 1)))
    named = cell >= 10  # room for class names beside the rows and columns
    font = ImageFont.load_default()
    chars = min(_LABEL_CHARS, max(len(label) for label in labels))
    margin = 12 + (7 * chars if named else 0)
    top = 28 + (7 * chars if named else 0)
    width = margin + size * cell + 8
    image = Image.new("RGB", (max(width, 260), top + size * cell + 24), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title or "confusion matrix", "black", font)
    for t, row in enumerate(matrix):
        total = sum(row) or 1
        for p, count in enumerate(row):
            # square root: a few mistakes in a large class stay visible
            shade = 255 - round(215 * (count / total) ** 0.5)
            colour = (shade, shade, 255) if t == p else (255, shade, shade)
            x, y = margin + p * cell, top + t * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour, outline=(230, 230, 230))
            if count and cell >= 24:
                ink = "white" if shade < 140 else "black"
                draw.text((x + 3, y + cell // 3), str(count), ink, font)
    if named:
        _draw_names(image, labels, chars, (margin, top, cell), font)
    draw.text((8, top + size * cell + 6), "rows: true class   columns: predicted", "black", font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _draw_names(
    image: Any, labels: Sequence[str], chars: int, grid: tuple[int, int, int], font: Any
) -> None:
    """Class names left of the rows, and turned upright above the columns."""
    from PIL import Image, ImageDraw

    margin, top, cell = grid
    draw = ImageDraw.Draw(image)
    for i, label in enumerate(labels):
        name = label[:chars]
        draw.text((6, top + i * cell + max(0, cell // 2 - 5)), name, "black", font)
        strip = Image.new("RGB", (7 * chars, 12), "white")
        ImageDraw.Draw(strip).text((0, 0), name, "black", font)
        turned = strip.rotate(90, expand=True)
        image.paste(turned, (margin + i * cell + max(0, cell // 2 - 6), top - turned.height - 4))
