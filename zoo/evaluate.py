"""Test-set accuracy: top-1, top-5 and per class."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnnzoo.errors import InvalidInput
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.datasets import get_dataset
from cnnzoo.zoo.registry import build_model, get_entry
from cnnzoo.zoo.subsets import subset_of

__all__ = ["EvalOptions", "evaluate", "evaluate_entry", "limit_dataset", "torch_threads"]


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    labels: Sequence[str],
    *,
    device: str = "cpu",
    progress: bool = False,
    description: str = "eval",
) -> dict[str, Any]:
    """Accuracy of `model` over `loader` (a DataLoader, or any iterable of (images, labels)
    batches).

    Returns:
        {"top1", "top5", "n", "loss", "per_class": {label: accuracy}}; top-5 is top-k with
        k = min(5, classes).
    """
    num_classes = len(labels)
    k = min(5, num_classes)
    correct1 = correct5 = seen = 0
    loss_sum = 0.0
    class_correct = torch.zeros(num_classes, dtype=torch.long)
    class_total = torch.zeros(num_classes, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for images, targets in tqdm(
                loader,
                desc=description,
                disable=None if progress else True,  # None: only on a terminal
                leave=False,
            ):
                images, targets = images.to(device), targets.to(device)
                logits = model(images)
                loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
                top = logits.topk(k, dim=1).indices
                hit1 = top[:, 0] == targets
                correct1 += int(hit1.sum())
                correct5 += int((top == targets[:, None]).any(dim=1).sum())
                seen += targets.numel()
                class_total += torch.bincount(targets.cpu(), minlength=num_classes)
                class_correct += torch.bincount(targets[hit1].cpu(), minlength=num_classes)
    finally:
        model.train(was_training)
    if seen == 0:
        raise InvalidInput("the evaluation set is empty")
    per_class = {
        label: (float(class_correct[i]) / float(class_total[i])) if class_total[i] else None
        for i, label in enumerate(labels)
    }
    return {
        "top1": correct1 / seen,
        "top5": correct5 / seen,
        "n": seen,
        "loss": loss_sum / seen,
        "per_class": per_class,
    }


def limit_dataset(dataset: Any, count: int | None, seed: int = 0) -> Any:
    """`count` images of `dataset` from every class in proportion, drawn with `seed` (all when
    None; see `cnnzoo.zoo.subsets`)."""
    return subset_of(dataset, count, seed)


class torch_threads:  # noqa: N801 - used like a function
    """Context manager setting torch's CPU thread count, restoring it afterwards."""

    def __init__(self, threads: int | None) -> None:
        if threads is not None and threads < 1:
            raise InvalidInput(f"--threads must be >= 1, got {threads}")
        self.threads = threads
        self.previous: int | None = None

    def __enter__(self) -> None:
        if self.threads is not None:
            self.previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            torch.set_num_threads(self.previous)


@dataclass
class EvalOptions:
    """One `cnnzoo eval`.

    Attributes:
        model: zoo entry name, or a run folder.
        weights: "default" (the shipped weights), None (random init) or a weights file.
        data_dir: the data folder (see `cnnzoo.zoo.datasets.resolve_data_dir`).
        dataset: an image folder to evaluate on instead of the entry's test set; its class
            folders are matched to the entry's labels by name.
        download: fetch the entry's dataset when it is missing.
        subset: evaluate on N images drawn from every class (seed 0, as training's
            `--test-subset` draws them).
        batch_size: images per batch.
        threads: torch CPU threads (default: torch's).
        progress: show a progress bar (on a terminal only).

    Raises:
        InvalidInput: a batch size, subset or thread count below 1.
    """

    model: str
    weights: str | os.PathLike[str] | None = "default"
    data_dir: str | os.PathLike[str] | None = None
    dataset: str | None = None
    download: bool = False
    subset: int | None = None
    batch_size: int = 256
    threads: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        for key in ("batch_size", "subset", "threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise InvalidInput(f"--{key.replace('_', '-')} must be >= 1, got {value}")


def evaluate_entry(options: EvalOptions) -> dict[str, Any]:
    """Evaluate a zoo entry on its test set (or on an image folder, `options.dataset`).

    Returns:
        {"model", "dataset", "split", "weights", "weights_sha256", "top1", "top5", "n", "loss",
        "per_class"}.
    """
    entry = get_entry(options.model)
    weights = options.weights
    with torch_threads(options.threads):
        model = build_model(entry, weights=weights)
        weights_path = entry.weights_file if weights == "default" else weights
        source = options.dataset or entry.dataset
        opened = {"data_dir": options.data_dir, "download": options.download}
        if options.dataset is None:  # the entry's own test split (a held-out one drawn again)
            data = entry.open_dataset("test", offer_download=True, **opened)
        else:
            data = get_dataset(
                options.dataset,
                "test",
                transform=entry.preprocess.torch_transform(),
                offer_download=True,  # `cnnzoo eval --download`
                **opened,
            )
            _map_folder_classes(data, entry.labels)
        data = limit_dataset(data, options.subset)
        loader = DataLoader(data, batch_size=options.batch_size, shuffle=False, num_workers=0)
        metrics = evaluate(model, loader, entry.labels, progress=options.progress)
    return {
        "model": entry.name,
        "dataset": str(source),
        "split": "test",
        "weights": None if weights_path is None else str(weights_path),
        "weights_sha256": None if weights_path is None else sha256_file(Path(weights_path)),
        **metrics,
    }


def _map_folder_classes(data: Any, labels: Sequence[str]) -> None:
    """Make an ImageFolder's targets the entry's class indices, matching folder names to labels."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = [name for name in data.classes if name not in index]
    if unknown:
        raise InvalidInput(
            f"image folder classes {unknown[:5]} are not labels of this model "
            f"(labels: {', '.join(list(labels)[:10])}{', ...' if len(labels) > 10 else ''})"
        )
    mapping = [index[name] for name in data.classes]
    data.target_transform = mapping.__getitem__
