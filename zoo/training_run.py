"""A training session under way (`TrainingRun`), and the step that finishes a run.

`cnnzoo.zoo.train` builds a `TrainingRun`, trains its epochs, and `finish_run` turns the last
one into the run's results: `model.safetensors` (the last epoch, what `eval` and `export` use),
for a run on other data `best.safetensors` (the epoch with the best top-1 on the held-out
split), `confusion.png`, and `card.json` saying what was chosen and which file is which. The
train state file goes last, so a run interrupted while finishing resumes and finishes again.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from cnnzoo.fileio import atomic_path, atomic_write_json, sha256_file
from cnnzoo.zoo.card import build_card, hardware_info
from cnnzoo.zoo.checkpoints import STATE_FILE, decode_state, encode_state, epoch_path, save_weights
from cnnzoo.zoo.confusion import CARD_MATRIX_CLASSES, draw_confusion
from cnnzoo.zoo.evaluate import evaluate
from cnnzoo.zoo.loop import TrainStep
from cnnzoo.zoo.recipe import Recipe
from cnnzoo.zoo.registry import ZooEntry
from cnnzoo.zoo.run_state import RunSettings, resume_command

__all__ = ["BEST_FILE", "CONFUSION_FILE", "TrainResult", "TrainingRun", "finish_run"]

BEST_FILE = "best.safetensors"
CONFUSION_FILE = "confusion.png"


@dataclass
class TrainResult:
    """What `cnnzoo.zoo.train.train` did: a finished run (with its card) or one stopped early."""

    model: str
    model_dir: Path
    epochs_done: int
    epochs: int
    card: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.epochs

    def summary(self) -> str:
        if not self.finished:
            return (
                f"{self.model}: stopped after epoch {self.epochs_done} of {self.epochs} in "
                f"{self.model_dir}; continue with `{resume_command(self.model_dir)}`"
            )
        assert self.card is not None
        metrics = self.card["metrics"]
        best = self.card.get("selection")
        kept = (
            f"; the best epoch ({best['best_epoch']}, top-1 {100 * best['best_top1']:.2f}%) is "
            f"{BEST_FILE}"
            if best
            else ""
        )
        return (
            f"{self.model}: {self.epochs} epochs, test top-1 {100 * metrics['top1']:.2f}% "
            f"top-5 {100 * metrics['top5']:.2f}% ({metrics['n']} images), "
            f"{self.card['wall_time_seconds']:.0f}s; wrote {self.model_dir / 'model.safetensors'} "
            f"and card.json{kept}"
        )


@dataclass
class TrainingRun:
    """A training session under way: what the epochs and the finishing step share.

    `options` is the `TrainOptions` of the session; `chosen` the card's account of what was
    chosen from the data; `metrics` the last epoch's test metrics.
    """

    entry: ZooEntry
    train_set: Any
    dataset_card: dict[str, Any]
    options: Any
    recipe: Recipe
    settings: RunSettings
    model_dir: Path
    model: nn.Module
    step: TrainStep
    test_loader: DataLoader
    workers: int
    start_epoch: int
    init: dict[str, Any] | None
    history: list[dict[str, Any]]
    wall: float
    commands: str
    chosen: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    device_data: Any = None  # the splits held on the GPU (cnnzoo.zoo.device_data), if they are

    def test_batches(self) -> Any:
        """The test split's batches: from the GPU when it holds them, else the loader's."""
        return self.device_data.test_batches() if self.device_data else self.test_loader

    @property
    def preset(self) -> bool:
        """Whether the run trains a preset (else an architecture on a dataset)."""
        return self.options.dataset is None

    def state_info(self, epoch: int) -> dict[str, Any]:
        """What `ResumedRun.load` reads back, after `epoch`."""
        return {
            "epoch": epoch,
            "recipe": self.recipe.to_dict(),
            "settings": self.settings.to_dict(),
            "history": self.history,
            "wall_time_seconds": self.wall,
            "command": self.commands,
            "entry": self.entry.card_fields(),
            "dataset_card": self.dataset_card,
            "init": self.init,
            "preset": self.preset,
            "chosen": self.chosen,
        }


def finish_run(run: TrainingRun) -> TrainResult:
    """Write the final weights, the best epoch's (a run on other data), the confusion matrix
    and the card; the state file goes."""
    entry, model, settings = run.entry, run.model, run.settings
    metrics = run.metrics
    if entry.weights_dtype != "float32":  # the card measures the weights as they are stored
        model.load_state_dict(decode_state(encode_state(model.state_dict(), entry.weights_dtype)))
        metrics = {}
    if not metrics:  # resumed a finished run, or rounded weights: measure the final weights
        metrics = evaluate(model, run.test_batches(), entry.labels, device=run.options.device)
    weights = run.model_dir / "model.safetensors"
    epochs = run.recipe.epochs
    meta = {"zoo_entry": entry.name, "epochs": str(epochs), "seed": str(settings.seed)}
    save_weights(model, weights, meta, entry.weights_dtype)
    draw_confusion(
        metrics["confusion"], entry.labels, run.model_dir / CONFUSION_FILE,
        f"{entry.name}: {metrics['n']} test images, top-1 {100 * metrics['top1']:.2f}%",
    )  # fmt: skip
    extra: dict[str, Any] = {"chosen": run.chosen} if run.chosen else {}
    if not run.preset:
        extra["selection"] = _keep_best(run, metrics)
    card = build_card(
        {**entry.card_fields(), "recipe": run.recipe.to_dict()},
        model=model,
        weights=weights,
        seed=settings.seed,
        dataset={
            **run.dataset_card,
            "n_train": len(run.train_set),
            "n_test": len(run.test_loader.dataset),  # type: ignore[arg-type]
            "train_subset": settings.train_subset,
            "test_subset": settings.test_subset,
        },
        metrics=_card_metrics(metrics),
        history=run.history,
        wall_time_seconds=run.wall,
        hardware={**hardware_info(run.options.device), "data_workers": run.workers},
        command=run.commands,
        init=run.init,
        extra=extra,
    )
    atomic_write_json(run.model_dir / "card.json", card)
    (run.model_dir / STATE_FILE).unlink(missing_ok=True)
    return TrainResult(entry.name, run.model_dir, epochs, epochs, card)


def _keep_best(run: TrainingRun, metrics: dict[str, Any]) -> dict[str, Any]:
    """Copy the epoch with the best held-out top-1 (the first of equals) to `best.safetensors`;
    the card's account of it."""
    best = max(run.history, key=lambda record: record["test_top1"])
    source = epoch_path(run.model_dir, best["epoch"])
    target = run.model_dir / BEST_FILE
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    split = run.dataset_card.get("test_split") or "test"
    return {
        "metric": f"top-1 on the held-out split ({split}), after each epoch",
        "best_epoch": best["epoch"],
        "best_top1": best["test_top1"],
        "best_file": BEST_FILE,
        "best_sha256": sha256_file(target),
        "last_epoch": run.recipe.epochs,
        "last_top1": metrics["top1"],
        "exported": "model.safetensors (the last epoch): eval and export use it; pass "
        f"--weights {run.model_dir / BEST_FILE} for the best epoch. The best epoch was chosen "
        "on the split it is measured on, so its top-1 is an optimistic estimate.",
    }


def _card_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics as a card keeps them: the matrix only up to `CARD_MATRIX_CLASSES` classes."""
    if len(metrics["confusion"]) <= CARD_MATRIX_CLASSES:
        return metrics
    return {k: v for k, v in metrics.items() if k != "confusion"}
