"""Image folders in torchvision's ImageFolder layout, checked before anything trains on them.

A dataset folder holds either `train/` and `test/` (or `val/`), each with one subfolder of
images per class, or only the class folders (then a seeded, stratified part is held out as the
test split, `val_split`). Class folder names are the labels, so they travel into model cards,
labels.txt and every answer of the server: hidden folders (`.git`, `.ipynb_checkpoints`) are
not classes, and a name with control characters or surrounding spaces is refused.

Opening a split reads every image once: files without an image extension (torchvision's
`IMG_EXTENSIONS`) are ignored; an image Pillow cannot decode (corrupt, truncated) is skipped and
counted, or refused with `strict`; each image's colour mode and size are recorded, so training
can pick the common ones and say how many it converted.
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnzoo.errors import DatasetNotFound, InvalidInput
from cnnzoo.zoo.images import read_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderDataset",
    "FolderLayout",
    "find_layout",
    "open_split",
]

# torchvision.datasets.folder.IMG_EXTENSIONS (spelled out: importing torchvision is slow)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TEST_FOLDERS = ("test", "val")
# Pillow modes that hold one grey channel (after `cnnzoo.zoo.images` normalises 16-bit ones).
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_REMEDY = (
    "give the path of a folder with one subfolder of images per class, or with train/ and "
    "test/ (or val/) holding such subfolders (an image folder cannot be downloaded)"
)


@dataclass(frozen=True)
class FolderLayout:
    """Where the splits of an image folder are.

    Attributes:
        root: the dataset folder.
        train: the folder of the training split's class folders.
        test: the folder of the test split's class folders; None when it is held out of
            `train` (`val_split`) or when the folder has no splits at all.
        test_name: "test", "val" or "val-split" (held out) for the card.
        classes: the class folder names, sorted (the class indices).
    """

    root: Path
    train: Path
    test: Path | None
    test_name: str
    classes: tuple[str, ...]


def find_layout(root: Path, *, val_split: float | None = None) -> FolderLayout:
    """The splits and classes of the image folder `root`.

    Raises:
        DatasetNotFound: `root` is not a folder or has no class folders.
        InvalidInput: class folders that differ between train/ and test/, a class name that
            cannot be a label, `val_split` with a folder that has its own test split.
    """
    if not root.is_dir():
        raise _missing(root, "no such folder")
    train = root / "train"
    if train.is_dir():
        test = next((root / n for n in TEST_FOLDERS if (root / n).is_dir()), None)
        classes = _class_folders(train)
        if test is not None:
            if val_split is not None:
                raise InvalidInput(
                    f"{root} has its own {test.name}/ split; drop --val-split (it holds out "
                    "part of a folder that has no test split)"
                )
            others = _class_folders(test)
            if others != classes:
                only_train = sorted(set(classes) - set(others)) or ["none"]
                only_test = sorted(set(others) - set(classes)) or ["none"]
                raise InvalidInput(
                    f"the class folders of {train} and {test} differ: only in train/: "
                    f"{', '.join(only_train)}; only in {test.name}/: {', '.join(only_test)}"
                )
            return FolderLayout(root, train, test, test.name, classes)
    else:
        train, classes = root, _class_folders(root)
    return FolderLayout(root, train, None, "val-split" if val_split else "", classes)


def _class_folders(folder: Path) -> tuple[str, ...]:
    names = sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not names:
        raise _missing(folder, "it has no class folders")
    for name in names:
        problem = _label_problem(name)
        if problem:
            raise InvalidInput(
                f"class folder {name!r} in {folder} cannot be a label: {problem}; rename it"
            )
    return tuple(names)


def _label_problem(name: str) -> str:
    """Why a folder name cannot travel as a label (labels.txt, cards, answers), or ""."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if any(unicodedata.category(c).startswith("C") for c in name):
        return "it contains control characters (a newline or tab would break labels.txt)"
    if name != name.strip():
        return "it starts or ends with white space"
    return ""


def _missing(folder: Path, detail: str) -> DatasetNotFound:
    return DatasetNotFound(f"image folder not found or corrupted in {folder} ({detail}); {_REMEDY}")


@dataclass
class FolderScan:
    """The usable images of one split and what was left out.

    Attributes:
        samples: (path, class index) of each readable image, sorted by class then path.
        skipped: (path, reason) of each image file that would not decode.
        ignored: how many files without an image extension were ignored.
        modes: images per colour kind ("L" or "RGB").
        sizes: images per (width, height).
    """

    samples: list[tuple[Path, int]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignored: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)


def scan(folder: Path, classes: tuple[str, ...], *, strict: bool = False) -> FolderScan:
    """Read every image under `folder/<class>/` once (see the module docstring).

    Raises:
        InvalidInput: with `strict`, an image that does not decode; a class folder without a
            readable image.
    """
    result = FolderScan()
    for index, name in enumerate(classes):
        found = 0
        for path in _files(folder / name):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                result.ignored += 1
                continue
            try:
                image = read_image(path, formats=None)
            except InvalidInput as err:
                if strict:
                    raise InvalidInput(
                        f"{err.reason} (--strict refuses unreadable images)"
                    ) from None
                result.skipped.append((path, err.reason))
                continue
            result.samples.append((path, index))
            result.modes["L" if image.mode in _GREY_MODES else "RGB"] += 1
            result.sizes[image.size] += 1
            found += 1
        if not found:
            raise InvalidInput(f"class folder {folder / name} has no readable images")
    return result


def _files(folder: Path) -> list[Path]:
    """Every file below `folder`, sorted (hidden files and folders left out), as ImageFolder
    walks them."""
    found = []
    for parent, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(parent) / n for n in names if not n.startswith(".")]
    return sorted(found)


def stratified_split(
    samples: list[tuple[Path, int]], val_split: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(train, held out): `val_split` of each class's images, drawn with `seed`.

    Raises:
        InvalidInput: `val_split` outside (0, 1), or a class with fewer than two images.
    """
    if not 0.0 < val_split < 1.0:
        raise InvalidInput(f"--val-split must be between 0 and 1 (exclusive), got {val_split}")
    rng = np.random.default_rng(seed)
    train: list[tuple[Path, int]] = []
    held: list[tuple[Path, int]] = []
    for index in sorted({target for _, target in samples}):
        items = [s for s in samples if s[1] == index]
        if len(items) < 2:
            raise InvalidInput(
                f"class folder {items[0][0].parent.name!r} has {len(items)} image; --val-split "
                "needs at least two per class"
            )
        count = min(len(items) - 1, max(1, round(len(items) * val_split)))
        chosen = set(rng.permutation(len(items))[:count].tolist())
        held += [s for i, s in enumerate(items) if i in chosen]
        train += [s for i, s in enumerate(items) if i not in chosen]
    return train, held


class FolderDataset:
    """(image tensor, class index) pairs of one split of an image folder.

    Images are decoded like the server decodes uploads (`cnnzoo.zoo.images`), then `transform`
    runs on the PIL image.
    """

    def __init__(
        self,
        samples: list[tuple[Path, int]],
        classes: tuple[str, ...],
        transform: Callable[[Any], Any] | None,
        scan_result: FolderScan,
        root: Path,
    ) -> None:
        self.samples = samples
        self.targets = [target for _, target in samples]
        self.classes = list(classes)
        self.transform = transform
        self.target_transform: Callable[[int], int] | None = None
        self.scan = scan_result
        self.root = root

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        image: Any = read_image(path, formats=None)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, classes={len(self.classes)}, "
            f"root={str(self.root)!r})"
        )


def open_split(
    root: Path,
    split: str,
    *,
    transform: Callable[[Any], Any] | None = None,
    val_split: float | None = None,
    seed: int = 0,
    strict: bool = False,
) -> FolderDataset:
    """One split of the image folder `root`.

    With train/ and test/ (or val/), "test" reads the test folder; with `val_split`, "train"
    and "test" are the two parts of the stratified split; a folder of class folders alone
    gives all its images for either split (evaluation, interpretability jobs).

    Raises:
        DatasetNotFound: no such folder, or no class folders.
        InvalidInput: see `find_layout`, `scan` and `stratified_split`.
    """
    layout = find_layout(root, val_split=val_split)
    folder = layout.test if split == "test" and layout.test is not None else layout.train
    found = scan(folder, layout.classes, strict=strict)
    samples = found.samples
    if val_split is not None:
        kept, held = stratified_split(samples, val_split, seed)
        samples = held if split == "test" else kept
    return FolderDataset(samples, layout.classes, transform, found, root)
