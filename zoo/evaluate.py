"""Test-set accuracy: top-1, top-5 and per class."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.errors import InvalidInput

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader

__all__ = ["evaluate", "evaluate_entry", "limit_dataset", "torch_threads"]


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    labels: Sequence[str],
    *,
    device: str = "cpu",
    progress: bool = False,
    description: str = "eval",
) -> dict[str, Any]:
    """Accuracy of `model` over `loader`.

    Returns:
        {"top1", "top5", "n", "loss", "per_class": {label: accuracy}}; top-5 is top-k with
        k = min(5, classes).
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

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
                loader, desc=description, disable=not progress, leave=False
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


def limit_dataset(dataset: Any, count: int | None) -> Any:
    """The first `count` items of `dataset` (all when None)."""
    if count is None:
        return dataset
    if count <= 0:
        raise InvalidInput(f"a subset needs at least 1 image, got {count}")
    from torch.utils.data import Subset

    return Subset(dataset, range(min(count, len(dataset))))


class torch_threads:  # noqa: N801 - used like a function
    """Context manager setting torch's CPU thread count, restoring it afterwards."""

    def __init__(self, threads: int | None) -> None:
        if threads is not None and threads < 1:
            raise InvalidInput(f"--threads must be >= 1, got {threads}")
        self.threads = threads
        self.previous: int | None = None

    def __enter__(self) -> None:
        import torch

        if self.threads is not None:
            self.previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.previous is not None:
            torch.set_num_threads(self.previous)


def evaluate_entry(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = "default",
    data_dir: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    download: bool = False,
    subset: int | None = None,
    batch_size: int = 256,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a zoo entry on its test set (or on an ImageFolder `dataset`).

    Returns:
        {"model", "dataset", "split", "weights", "weights_sha256", "top1", "top5", "n", "loss",
        "per_class"}.
    """
    from torch.utils.data import DataLoader

    from cnnzoo.fileio import sha256_file
    from cnnzoo.zoo import build_model, get_entry
    from cnnzoo.zoo.datasets import get_dataset

    entry = get_entry(name)
    if batch_size < 1:
        raise InvalidInput(f"--batch-size must be >= 1, got {batch_size}")
    with torch_threads(threads):
        model = build_model(name, weights=weights)
        weights_path = entry.weights_file if weights == "default" else weights
        source = dataset or entry.dataset
        data = get_dataset(
            source,
            "test",
            data_dir=data_dir,
            transform=entry.preprocess.torch_transform(),
            download=download,
            offer_download=True,  # `cnnzoo eval --download`
        )
        if dataset is not None:
            _map_folder_classes(data, entry.labels)
        data = limit_dataset(data, subset)
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
        metrics = evaluate(model, loader, entry.labels, progress=progress)
    return {
        "model": name,
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
