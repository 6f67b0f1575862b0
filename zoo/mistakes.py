"""`cnnzoo eval --misclassified DIR`: the model's worst mistakes on its test set, as pictures.

A mistake is a test image whose top-1 class is not its label; the worst are the ones the model
was surest of (the highest softmax probability on the wrong class). `MistakeCollector` keeps
the `count` worst while `cnnzoo.zoo.evaluate.evaluate` runs (no second pass over the data);
`write_mistakes` draws each as the image it is (enlarged to at least 128 px, nearest-neighbour
so pixels stay pixels) above a caption with the true and predicted labels and the
probabilities, named `NNN-true-LABEL-pred-LABEL.png`, plus `mistakes.json` listing them. The
folder is written whole or not at all.
"""

from __future__ import annotations

import heapq
import json
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnzoo.errors import AlreadyExists, InvalidInput

__all__ = ["Mistake", "MistakeCollector", "write_mistakes"]

_MIN_SIDE = 128
_CAPTION = 34


@dataclass(order=True)
class Mistake:
    """One misclassified image: its position in the evaluated dataset, true and predicted
    classes, and the probabilities the model gave the predicted and the true class."""

    confidence: float
    index: int = field(compare=False)
    true: int = field(compare=False)
    predicted: int = field(compare=False)
    p_true: float = field(compare=False)


class MistakeCollector:
    """Keeps the `count` most confident mistakes of the batches it observes, in order."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise InvalidInput(f"--misclassified-count must be >= 1, got {count}")
        self.count = count
        self.seen = 0
        self.wrong = 0
        self._heap: list[Mistake] = []

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        probabilities = logits.float().softmax(1)
        confidence, predicted = probabilities.max(1)
        wrong = (predicted != targets).nonzero().flatten().tolist()
        self.wrong += len(wrong)
        for row in wrong:
            mistake = Mistake(
                float(confidence[row]),
                self.seen + row,
                int(targets[row]),
                int(predicted[row]),
                float(probabilities[row, targets[row]]),
            )
            if len(self._heap) < self.count:
                heapq.heappush(self._heap, mistake)
            elif mistake > self._heap[0]:
                heapq.heapreplace(self._heap, mistake)
        self.seen += int(targets.numel())

    def worst(self) -> list[Mistake]:
        """The kept mistakes, surest first (ties: dataset order)."""
        return sorted(self._heap, key=lambda m: (-m.confidence, m.index))


def write_mistakes(
    mistakes: Sequence[Mistake],
    originals: Any,
    labels: Sequence[str],
    folder: Path,
    *,
    total_wrong: int,
    describe: Any = None,
) -> dict[str, Any]:
    """Draw `mistakes` into `folder` (new or empty) with `mistakes.json`; a summary.

    Args:
        mistakes: surest first (`MistakeCollector.worst`).
        originals: the evaluated dataset returning PIL images (`originals[m.index][0]`).
        labels: class names.
        folder: where to write; created, or empty.
        total_wrong: how many images were misclassified in all.
        describe: optional `index -> str` naming an image's source (a file path).

    Raises:
        AlreadyExists: `folder` holds files (nothing is overwritten).
        InvalidInput: `folder` is a file.
    """
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"--misclassified {folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise AlreadyExists(f"--misclassified {folder} is not empty; name a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    listed = []
    try:
        for rank, mistake in enumerate(mistakes, 1):
            true, predicted = labels[mistake.true], labels[mistake.predicted]
            name = f"{rank:03d}-true-{_safe(true)}-pred-{_safe(predicted)}.png"
            caption = (
                f"#{rank} true: {true}",
                f"predicted: {predicted} ({mistake.confidence:.2f}), true {mistake.p_true:.2f}",
            )
            _captioned(originals[mistake.index][0], caption).save(staging / name, format="PNG")
            listed.append(
                {
                    "rank": rank,
                    "file": name,
                    "index": mistake.index,
                    "source": describe(mistake.index) if describe else None,
                    "true": true,
                    "predicted": predicted,
                    "confidence": round(mistake.confidence, 4),
                    "p_true": round(mistake.p_true, 4),
                }
            )
        summary = {"written": len(listed), "misclassified": total_wrong}
        text = json.dumps({**summary, "mistakes": listed}, indent=2) + "\n"
        (staging / "mistakes.json").write_text(text, encoding="utf-8")
        if folder.is_dir():
            folder.rmdir()
        staging.replace(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"folder": str(folder), **summary}


def _safe(label: str) -> str:
    """A label as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._")[:40] or "class"


def _captioned(image: Any, lines: Sequence[str]) -> Any:
    """The image enlarged to at least `_MIN_SIDE` px, above a white caption strip."""
    from PIL import Image, ImageDraw, ImageFont

    image = image.convert("RGB")
    scale = max(1, -(-_MIN_SIDE // min(image.size)))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    width = max(image.width, 7 * max(len(line) for line in lines) + 8)
    canvas = Image.new("RGB", (width, image.height + _CAPTION), "white")
    canvas.paste(image, ((width - image.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for number, line in enumerate(lines):
        draw.text((4, image.height + 4 + 14 * number), line, "black", font)
    return canvas
