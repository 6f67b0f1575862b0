"""Test-set accuracy: top-1, top-5 and per class."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from cnnzoo.errors import AlreadyExists, InvalidInput
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.confusion import precision_recall
from cnnzoo.zoo.datasets import get_dataset
from cnnzoo.zoo.mistakes import MistakeCollector, write_mistakes
from cnnzoo.zoo.pretrained import is_pretrained_spec, pretrained_weights
from cnnzoo.zoo.registry import ZooEntry, build_model, get_entry
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
    observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """Accuracy of `model` over `loader` (a DataLoader, or any iterable of (images, labels)
    batches). `observe(logits, targets)` sees every batch (`cnnzoo.zoo.mistakes`).

    Returns:
        {"top1", "top5", "n", "loss", "per_class": {label: accuracy}, "precision": {label: p},
        "recall": {label: r}, "confusion": [[count]] (rows: true class, columns: predicted)};
        top-5 is top-k with k = min(5, classes); a class without images (or never predicted)
        has None.
    """
    num_classes = len(labels)
    k = min(5, num_classes)
    correct1 = correct5 = seen = 0
    loss_sum = 0.0
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long)
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
                if observe is not None:
                    observe(logits, targets)
                loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
                top = logits.topk(k, dim=1).indices
                hit1 = top[:, 0] == targets
                correct1 += int(hit1.sum())
                correct5 += int((top == targets[:, None]).any(dim=1).sum())
                seen += targets.numel()
                cells = (targets * num_classes + top[:, 0]).cpu()
                confusion += torch.bincount(cells, minlength=num_classes * num_classes)
    finally:
        model.train(was_training)
    if seen == 0:
        raise InvalidInput("the evaluation set is empty")
    matrix = confusion.view(num_classes, num_classes).tolist()
    precision, recall = precision_recall(matrix, labels)
    return {
        "top1": correct1 / seen,
        "top5": correct5 / seen,
        "n": seen,
        "loss": loss_sum / seen,
        "per_class": dict(recall),  # the accuracy on each class's images
        "precision": precision,
        "recall": recall,
        "confusion": matrix,
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
        weights: "default" (the shipped weights), None (random init), a weights file, or
            torchvision's weights by name ("torchvision[:TAG]", `cnnzoo.zoo.pretrained`: their
            preprocessing is used).
        data_dir: the data folder (see `cnnzoo.zoo.datasets.resolve_data_dir`).
        dataset: an image folder to evaluate on instead of the entry's test set; its class
            folders are matched to the entry's labels by name.
        download: fetch the entry's dataset when it is missing.
        subset: evaluate on N images drawn from every class (seed 0, as training's
            `--test-subset` draws them).
        batch_size: images per batch.
        threads: torch CPU threads (default: torch's).
        progress: show a progress bar (on a terminal only).
        misclassified: a new folder to draw the worst mistakes into (`cnnzoo.zoo.mistakes`).
        misclassified_count: how many of them.

    Raises:
        InvalidInput: a batch size, subset, thread or mistake count below 1.
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
    misclassified: Path | None = None
    misclassified_count: int = 50

    def __post_init__(self) -> None:
        for key in ("batch_size", "subset", "threads", "misclassified_count"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise InvalidInput(f"--{key.replace('_', '-')} must be >= 1, got {value}")
        if self.misclassified is not None:
            self.misclassified = Path(self.misclassified)
            if self.misclassified.is_dir() and any(self.misclassified.iterdir()):
                raise AlreadyExists(
                    f"--misclassified {self.misclassified} is not empty; name a new folder"
                )


def evaluate_entry(options: EvalOptions) -> dict[str, Any]:
    """Evaluate a zoo entry on its test set (or on an image folder, `options.dataset`).

    Returns:
        {"model", "dataset", "split", "weights", "weights_sha256", "top1", "top5", "n", "loss",
        "per_class", "precision", "recall", "confusion"}, and "misclassified" (the folder, how
        many were drawn and how many there were) with `options.misclassified`.

    Raises:
        Unavailable, IntegrityError: torchvision's weights cannot be fetched or are damaged.
        InvalidInput: weights or an image folder that do not fit the model.
    """
    entry = get_entry(options.model)
    weights, weights_path = options.weights, None
    if is_pretrained_spec(weights):
        entry, weights_path = _with_pretrained(entry, str(weights), options.progress)
        weights = weights_path
    with torch_threads(options.threads):
        model = build_model(entry, weights=weights)
        if weights_path is None:
            weights_path = entry.weights_file if weights == "default" else weights
        data = limit_dataset(_test_data(entry, options), options.subset)
        loader = DataLoader(data, batch_size=options.batch_size, shuffle=False, num_workers=0)
        mistakes = None
        if options.misclassified is not None:
            mistakes = MistakeCollector(options.misclassified_count)
        # Channels-last convolutions run about 1.3x as fast on a CPU (alexnet-cifar10's test set:
        # 24.5 -> 18.3 s on two cores), with the same predictions to float rounding; the weights'
        # layout is enough, PyTorch then runs each convolution channels-last.
        model = model.to(memory_format=torch.channels_last)
        metrics = evaluate(model, loader, entry.labels, progress=options.progress, observe=mistakes)
    report = {
        "model": entry.name,
        "dataset": str(options.dataset or entry.dataset),
        "split": "test",
        "weights": None if weights_path is None else str(weights_path),
        "weights_sha256": None if weights_path is None else sha256_file(Path(weights_path)),
        **metrics,
    }
    if mistakes is not None and options.misclassified is not None:
        originals = limit_dataset(_test_data(entry, options, _as_is), options.subset)
        report["misclassified"] = write_mistakes(
            mistakes.worst(), originals, entry.labels, options.misclassified,
            total_wrong=mistakes.wrong, describe=lambda i: _source_of(originals, i),
        )  # fmt: skip
    return report


def _with_pretrained(entry: ZooEntry, spec: str, progress: bool) -> tuple[ZooEntry, Path]:
    """The entry with torchvision's weights' own preprocessing, and their checked file."""
    weights = pretrained_weights(entry.spec, spec)
    if len(weights.categories) != entry.num_classes:
        raise InvalidInput(
            f"--weights {spec}: {weights.name} has {len(weights.categories)} classes and "
            f"{entry.name} {entry.num_classes}; fine-tune them with `cnnzoo train "
            f"{entry.arch} --dataset ... --init {spec}`"
        )
    entry = replace(entry, preprocess=weights.preprocess, labels=weights.categories)
    return entry, weights.fetch(progress=progress)


def _as_is(image: Any) -> Any:
    return image


def _test_data(entry: ZooEntry, options: EvalOptions, transform: Any = None) -> Any:
    """The entry's test split (a held-out one drawn again), or `options.dataset`'s images with
    the entry's classes; through the entry's preprocessing unless `transform` says otherwise."""
    opened = {"data_dir": options.data_dir, "download": options.download}
    transform = transform or entry.preprocess.torch_transform()
    if options.dataset is None:
        return entry.open_dataset("test", offer_download=True, transform=transform, **opened)
    data = get_dataset(
        options.dataset,
        "test",
        transform=transform,
        offer_download=True,  # `cnnzoo eval --download`
        **opened,
    )
    _map_folder_classes(data, entry.labels)
    return data


def _source_of(data: Any, index: int) -> str | None:
    """The file an image came from (image folders), else None."""
    if isinstance(data, Subset):
        return _source_of(data.dataset, data.indices[index])
    samples = getattr(data, "samples", None)
    return str(samples[index][0]) if samples is not None else None


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
