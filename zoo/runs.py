"""A run of an architecture on any dataset: what the data says the model needs.

`cnnzoo train ARCH --dataset SPEC` has no preset to follow, so `plan_run` reads the data and
derives the entry the run trains: the class names (the dataset's, or an image folder's class
folders), the colour mode (the images' common one; RGB for an architecture that takes only
three channels), the input size (the images' common side, or `--input-size`, checked against the
architecture; LeNet-5's 32x32 input takes 28x28 digits padded by 2, as in the paper), and the
normalisation (mean and standard deviation of the training split, in the chosen colour mode, at
the chosen size). What it converted, resized, skipped or ignored goes into the card's `dataset`
section.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnzoo.errors import InvalidInput
from cnnzoo.zoo.architectures import Architecture, get_architecture
from cnnzoo.zoo.datasets import (
    NAMED_DATASETS,
    channel_stats,
    check_dataset_name,
    get_dataset,
    named_dataset_card,
)
from cnnzoo.zoo.image_folders import FolderDataset, find_layout, scan, stratified_split
from cnnzoo.zoo.preprocess import Preprocess
from cnnzoo.zoo.recipe import Recipe
from cnnzoo.zoo.registry import ZooEntry, get_entry, list_models
from cnnzoo.zoo.repository import MODEL_NAME

__all__ = ["DataPlan", "check_run_name", "default_run_name", "fit_preprocess", "plan_run"]

log = logging.getLogger(__name__)

# Named datasets: their colour mode and image side (their class names come from the reader).
_NAMED = {
    "mnist": ("L", 28),
    "fashion-mnist": ("L", 28),
    "cifar10": ("RGB", 32),
    "cifar100": ("RGB", 32),
}
_SKIPPED_LISTED = 20  # unreadable files named in the card (all are counted)


@dataclass
class DataPlan:
    """The entry a run trains and its opened splits.

    Attributes:
        entry: the derived entry (no weights yet).
        train_set: the training split (its transform is set by the trainer).
        test_set: the test split.
        card: the card's `dataset` section without the counts the trainer adds.
        colour: the images' own colour mode ("L" or "RGB", before any conversion the
            architecture needs): what they are, for the choice of augmentation.
    """

    entry: ZooEntry
    train_set: Any
    test_set: Any
    card: dict[str, Any]
    colour: str = "RGB"


def default_run_name(arch: str, dataset: str) -> str:
    """`ARCH-<dataset or folder name>`, with characters a model name cannot hold as '-'."""
    tail = dataset if dataset in NAMED_DATASETS else Path(dataset).resolve().name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{arch}-{tail}").strip("-.") or arch


def check_run_name(name: str) -> str:
    """`name` if it can name a model in a repository (`--name`), else `InvalidInput`."""
    if not MODEL_NAME.match(name) or ".." in name:
        raise InvalidInput(
            f"--name {name!r}: a model name matches [A-Za-z0-9][A-Za-z0-9_.-]* (it names the "
            "run folder and the model in a repository)"
        )
    return name


def fit_preprocess(
    arch: Architecture,
    colour: str,
    side: int,
    input_size: int | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    reference: Preprocess | None = None,
) -> Preprocess:
    """The preprocessing that brings images of `side` px to what `arch` takes.

    A fixed-input network takes its size: smaller images padded when the border is even and no
    `input_size` was asked for (28x28 digits into LeNet-5's 32x32), others resized. Other
    networks take `input_size`, else the images' side, refused below the network's minimum;
    with the `reference` preprocessing of pretrained weights and no `input_size`, images at
    least its crop size take its resize and crop (224 from 256 for torchvision's ImageNet
    weights). `mean`/`std` are for `colour` (a grey statistic is repeated for RGB).

    Raises:
        InvalidInput: an input size the architecture cannot take (names what it needs).
    """
    if colour == "L" and 1 not in arch.channels:
        colour = "RGB"
    if colour == "RGB" and len(mean) == 1:
        mean, std = mean * 3, std * 3
    if arch.fixed_input is not None:
        fixed = arch.fixed_input
        if input_size is not None and input_size != fixed:
            raise InvalidInput(
                f"--input-size {input_size}: {arch.name} takes {fixed}x{fixed} inputs only "
                f"(drop --input-size or pass {fixed})"
            )
        border = fixed - side
        if input_size is None and border > 0 and border % 2 == 0:
            return Preprocess(colour, resize=side, crop=side, pad=border // 2, mean=mean, std=std)
        return Preprocess(colour, resize=fixed, crop=fixed, pad=0, mean=mean, std=std)
    if reference is not None and input_size is None and reference.crop and side >= reference.crop:
        return Preprocess(colour, reference.resize, reference.crop, 0, mean=mean, std=std)
    size = input_size or side
    if size < arch.min_input:
        given = f"--input-size {size}" if input_size else f"the images' {size} px"
        raise InvalidInput(
            f"{given} is too small for {arch.name}: it needs at least {arch.min_input} px "
            f"(pass --input-size {arch.min_input} or more)"
        )
    return Preprocess(colour, resize=size, crop=size, pad=0, mean=mean, std=std)


@dataclass
class _Data:
    """What reading a dataset found: its classes, splits, preprocessing and card section."""

    labels: tuple[str, ...]
    preprocess: Preprocess
    train_set: Any
    test_set: Any
    card: dict[str, Any]
    colour: str


def plan_run(
    arch_name: str,
    dataset: str,
    *,
    name: str | None,
    recipe: Recipe | None = None,
    input_size: int | None = None,
    val_split: float | None = None,
    seed: int = 0,
    strict: bool = False,
    data_dir: Any = None,
    download: bool = False,
    pretrained: Preprocess | None = None,
) -> DataPlan:
    """Read `dataset` and derive the entry `arch_name` trains on it (see the module docstring).

    Args:
        arch_name: an architecture (`cnnzoo list --architectures`).
        dataset: a named dataset or the path of an image folder.
        name: the run's name (default `default_run_name`).
        recipe: the training recipe (default: the architecture's).
        input_size: the input side to resize to (default: the images').
        val_split: an image folder without a test split: the fraction held out.
        seed: the seed of that split.
        strict: refuse unreadable images instead of skipping them.
        data_dir: the data folder of the named datasets.
        download: fetch a missing named dataset.
        pretrained: the preprocessing of the pretrained weights the run starts from: their
            normalisation replaces the data's (the layers expect it), and their resize and
            crop apply to images as large as the crop (see `fit_preprocess`).

    Raises:
        NotFound: an unknown architecture.
        DatasetNotFound: the data is missing.
        InvalidInput: a preset name, bad data or options (see `cnnzoo.zoo.image_folders`,
            `fit_preprocess`).
    """
    if arch_name in list_models():
        raise InvalidInput(
            f"{arch_name} is a preset (an architecture with its own dataset); to train on other "
            f"data name an architecture: `cnnzoo train {get_entry(arch_name).arch} --dataset "
            f"{dataset}` (`cnnzoo list --architectures`)"
        )
    arch = get_architecture(arch_name)
    check_dataset_name(dataset)
    run_name = check_run_name(name) if name else default_run_name(arch.name, dataset)
    if dataset in NAMED_DATASETS:
        data = _read_named(arch, dataset, input_size, val_split, data_dir, download, pretrained)
    else:
        data = _read_folder(arch, Path(dataset), input_size, val_split, seed, strict, pretrained)
    entry = ZooEntry(
        name=run_name,
        arch=arch.name,
        dataset=dataset if dataset in NAMED_DATASETS else data.card["folder"],
        labels=data.labels,
        preprocess=data.preprocess,
        recipe=recipe or arch.recipe,
        weights_dir=None,
        val_split=val_split,
        split_seed=data.card["split_seed"],
    )
    return DataPlan(entry, data.train_set, data.test_set, data.card, data.colour)


def _read_named(
    arch: Architecture,
    name: str,
    input_size: int | None,
    val_split: float | None,
    data_dir: Any,
    download: bool,
    pretrained: Preprocess | None,
) -> _Data:
    if name not in _NAMED:
        raise InvalidInput(
            f"--dataset {name}: train ImageNet with its presets (`cnnzoo list '*imagenet'`) or "
            "pass its folder as an image folder"
        )
    if val_split is not None:
        raise InvalidInput(
            f"--val-split holds out part of an image folder; {name} has its own test split"
        )
    opened = {"data_dir": data_dir, "download": download, "offer_download": True}
    train_set = get_dataset(name, "train", **opened)
    test_set = get_dataset(name, "test", **opened)
    colour, side = _NAMED[name]
    mean, std = _statistics(pretrained, lambda: channel_stats(train_set))
    labels = [str(d) for d in range(10)] if name == "mnist" else list(train_set.classes)
    card = {**named_dataset_card(name, data_dir), "val_split": None, "split_seed": 0}
    card["normalisation"] = _normalisation_source(pretrained)
    preprocess = fit_preprocess(arch, colour, side, input_size, mean, std, pretrained)
    return _Data(tuple(labels), preprocess, train_set, test_set, card, colour)


def _read_folder(
    arch: Architecture,
    root: Path,
    input_size: int | None,
    val_split: float | None,
    seed: int,
    strict: bool,
    pretrained: Preprocess | None,
) -> _Data:
    if val_split is not None and not 0.0 < val_split < 1.0:
        raise InvalidInput(f"--val-split must be between 0 and 1 (exclusive), got {val_split}")
    root = root.resolve()
    layout = find_layout(root, val_split=val_split)
    if layout.test is None and val_split is None:
        where = "beside train/" if layout.train != root else "and no train/ (only class folders)"
        raise InvalidInput(
            f"{root} has no test/ or val/ folder {where}; pass --val-split 0.1 to hold out a "
            "seeded, stratified part of its images for testing"
        )
    if len(layout.classes) < 2:
        raise InvalidInput(
            f"{layout.train} has one class folder ({layout.classes[0]}); a classifier needs at "
            "least two"
        )
    train_scan = scan(layout.train, layout.classes, strict=strict)
    test_scan = scan(layout.test, layout.classes, strict=strict) if layout.test else None
    scans = [s for s in (train_scan, test_scan) if s is not None]
    train_samples, test_samples = train_scan.samples, test_scan.samples if test_scan else []
    if val_split is not None:
        train_samples, test_samples = stratified_split(train_samples, val_split, seed)
    files_colour = "L" if train_scan.modes["L"] > train_scan.modes["RGB"] else "RGB"
    colour = files_colour if 1 in arch.channels else "RGB"
    sides: Counter[int] = Counter()
    for size, count in train_scan.sizes.items():
        sides[min(size)] += count
    side = sides.most_common(1)[0][0]
    common_size = train_scan.sizes.most_common(1)[0][0]
    unit = fit_preprocess(arch, colour, side, input_size, (0.0,), (1.0,), pretrained)
    mean, std = _statistics(
        pretrained, lambda: _folder_stats(train_samples, layout.classes, unit, root)
    )
    skipped = [(path, reason) for s in scans for path, reason in s.skipped]
    if skipped:
        log.warning(
            "skipped %d unreadable image(s) in %s, e.g. %s (--strict refuses them)",
            len(skipped), root, skipped[0][1],
        )  # fmt: skip
    other = "RGB" if colour == "L" else "L"
    card = {
        "name": root.name,
        "train_split": "train" if layout.train != root else ".",
        "test_split": layout.test_name,
        "folder": str(root),
        "source": None,
        "source_sha256": None,
        "val_split": val_split,
        "split_seed": seed if val_split is not None else 0,
        "normalisation": _normalisation_source(pretrained),
        "images": {
            "skipped": len(skipped),
            "skipped_files": [
                f"{path.relative_to(root).as_posix()}: {reason}"
                for path, reason in skipped[:_SKIPPED_LISTED]
            ],
            "ignored_files": sum(s.ignored for s in scans),
            "colour": colour,
            f"converted_from_{other}": sum(s.modes[other] for s in scans),
            "common_size": list(common_size),
            "resized": sum(n for s in scans for size, n in s.sizes.items() if size != common_size),
        },
    }
    return _Data(
        layout.classes,
        fit_preprocess(arch, colour, side, input_size, mean, std, pretrained),
        FolderDataset(train_samples, layout.classes, None, train_scan, root),
        FolderDataset(test_samples, layout.classes, None, test_scan or train_scan, root),
        card,
        files_colour,
    )


def _statistics(
    pretrained: Preprocess | None, measure: Any
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The pretrained weights' mean and std, else `measure()` of the training split."""
    if pretrained is not None:
        return pretrained.mean, pretrained.std
    return measure()


def _normalisation_source(pretrained: Preprocess | None) -> str:
    return "the pretrained weights'" if pretrained is not None else "measured on the training split"


def _folder_stats(
    samples: list[tuple[Path, int]],
    classes: tuple[str, ...],
    preprocess: Preprocess,
    root: Path,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the training images as the model sees them
    (converted and resized, before the padding), in [0, 1]."""
    bare = Preprocess(
        preprocess.colour, preprocess.resize, preprocess.crop, 0,
        (0.0,) * preprocess.channels, (1.0,) * preprocess.channels,
    )  # fmt: skip
    data = FolderDataset(samples, classes, bare.apply, None, root)  # type: ignore[arg-type]
    total = np.zeros(preprocess.channels)
    squares = np.zeros(preprocess.channels)
    count = 0
    for index in range(len(data)):
        array = data[index][0].astype(np.float64)
        total += array.sum(axis=(1, 2))
        squares += (array**2).sum(axis=(1, 2))
        count += array.shape[1] * array.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(v), 4) for v in std)
