"""Datasets: the named ones, read offline from the data folder, and image folders.

The data folder is `--data-dir`, else `$CNNZOO_DATA`, else `./data`, in torchvision's layout:

| name | folder | reader |
|---|---|---|
| mnist | `MNIST/raw/*-ubyte` | torchvision's MNIST |
| fashion-mnist | `FashionMNIST/raw/*-ubyte` | torchvision's FashionMNIST |
| cifar10 | `cifar-10-batches-bin/` (binary), else `cifar-10-batches-py/` | ours, torchvision's |
| cifar100 | `cifar-100-python/` | torchvision's CIFAR100 (fine labels) |
| imagenet | `imagenet/{train,val}/` | torchvision's ImageFolder |

Any other name that is a path is an image folder (`cnnzoo.zoo.image_folders`). Missing or
damaged data raises one `DatasetNotFound` naming the folder looked in and the ways to point at
data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnzoo.errors import DatasetNotFound, InvalidInput
from cnnzoo.zoo.downloads import DOWNLOADABLE, download_dataset
from cnnzoo.zoo.image_folders import open_split

__all__ = [
    "DATASETS",
    "NAMED_DATASETS",
    "SPLITS",
    "CIFAR10Binary",
    "channel_stats",
    "check_dataset_name",
    "dataset_source",
    "get_dataset",
    "named_dataset_card",
    "resolve_data_dir",
]

NAMED_DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet")
DATASETS = NAMED_DATASETS
SPLITS = ("train", "test")
# The folder each named dataset is read from (CIFAR-10: the binary layout, else the python one).
FOLDERS = {
    "mnist": ("MNIST",),
    "fashion-mnist": ("FashionMNIST",),
    "cifar10": ("cifar-10-batches-bin", "cifar-10-batches-py"),
    "cifar100": ("cifar-100-python",),
    "imagenet": ("imagenet",),
}

CIFAR10_FOLDER = "cifar-10-batches-bin"
_CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_CIFAR10_RECORD = 1 + 3 * 32 * 32


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """`data_dir` if given, else `$CNNZOO_DATA`, else `./data`."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("CNNZOO_DATA")
    return Path(env) if env else Path("data")


_POINT_AT_DATA = "point --data-dir or CNNZOO_DATA at the data folder (default ./data)"
_IMAGENET_REMEDY = (
    f"{_POINT_AT_DATA}, holding imagenet/train/ and imagenet/val/ with one subfolder of images "
    f"per class (ImageNet cannot be downloaded for you)"
)


def _download_remedy(offer_download: bool) -> str:
    """How to get a named dataset; names --download only for callers that have that flag."""
    return _POINT_AT_DATA + (", or pass --download to fetch it" if offer_download else "")


def _missing(what: str, folder: Path, detail: str, remedy: str) -> DatasetNotFound:
    detail = f" ({detail})" if detail else ""
    return DatasetNotFound(f"{what} not found or corrupted in {folder}{detail}; {remedy}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidInput(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def get_dataset(
    name: str | os.PathLike[str],
    split: str = "test",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    transform: Callable[[Any], Any] | None = None,
    download: bool = False,
    offer_download: bool = False,
    val_split: float | None = None,
    seed: int = 0,
    strict: bool = False,
) -> Any:
    """A torch Dataset of (tensor, label) pairs with `classes` (names) and `targets`.

    Args:
        name: one of `NAMED_DATASETS`, or the path of an image folder (see
            `cnnzoo.zoo.image_folders`).
        split: "train" or "test".
        data_dir: the data folder; see `resolve_data_dir`.
        transform: applied to each PIL image; default `ToTensor()`.
        download: fetch MNIST, Fashion-MNIST, CIFAR-10 or CIFAR-100 when missing
            (`cnnzoo.zoo.downloads`: one clear error and nothing left behind offline).
        offer_download: the caller has a `--download` flag: a missing-data error suggests it
            (never for image folders, which cannot be downloaded).
        val_split: an image folder of class folders only: the fraction held out as "test".
        seed: the seed of that split.
        strict: an image folder's unreadable images are an error instead of being skipped.

    Raises:
        DatasetNotFound: the data is missing or damaged (names the folder looked in).
        InvalidInput: an unknown split or dataset, or a malformed image folder.
    """
    from torchvision import datasets, transforms

    transform = transform if transform is not None else transforms.ToTensor()
    root = resolve_data_dir(data_dir)
    key = os.fspath(name)
    if key in NAMED_DATASETS:
        _check_split(split)
    train = split == "train"
    if download and key in DOWNLOADABLE and not any((root / f).is_dir() for f in FOLDERS[key][1:]):
        download_dataset(key, root)  # (CIFAR-10's python layout, when there, is read instead)
    # after a download (or with no --download flag) the remedy is pointing at the data
    remedy = _download_remedy(offer_download and not download)
    if key in ("mnist", "fashion-mnist"):
        reader = datasets.MNIST if key == "mnist" else datasets.FashionMNIST
        try:
            return reader(str(root), train=train, transform=transform, download=False)
        except RuntimeError:
            folder = root / FOLDERS[key][0] / "raw"
            raise _missing(
                reader.__name__, folder, "expected the *-idx?-ubyte files", remedy
            ) from None
    if key == "cifar10":
        if not (root / CIFAR10_FOLDER).is_dir() and (root / FOLDERS[key][1]).is_dir():
            return _torchvision_cifar(datasets.CIFAR10, root, train, transform, remedy)
        return CIFAR10Binary(
            root, split, transform=transform, offer_download=offer_download and not download
        )
    if key == "cifar100":
        return _torchvision_cifar(datasets.CIFAR100, root, train, transform, remedy)
    if key == "imagenet":
        folder = root / "imagenet" / ("train" if train else "val")
        return _imagenet(folder, transform)
    check_dataset_name(key)
    _check_split(split)
    return open_split(
        Path(key), split, transform=transform, val_split=val_split, seed=seed, strict=strict
    )


def check_dataset_name(name: str) -> str:
    """`name` if it is a named dataset or reads as a path (an image folder), else `InvalidInput`
    listing the names."""
    if name in NAMED_DATASETS or "/" in name or os.sep in name or Path(name).exists():
        return name
    raise InvalidInput(
        f"unknown dataset {name!r}; use one of {', '.join(NAMED_DATASETS)} or the path of an "
        "image folder"
    )


def _torchvision_cifar(
    reader: Any, root: Path, train: bool, transform: Callable[[Any], Any], remedy: str
) -> Any:
    """torchvision's CIFAR-10/100 reader (python layout), which checks each file's md5."""
    try:
        return reader(str(root), train=train, transform=transform, download=False)
    except RuntimeError:
        folder = root / reader.base_folder
        raise _missing(reader.__name__, folder, "python layout, md5-checked", remedy) from None


def _imagenet(folder: Path, transform: Callable[[Any], Any]) -> Any:
    from torchvision import datasets

    what = "ImageNet (an ImageFolder)"
    if not folder.is_dir():
        raise _missing(what, folder, "no such folder", _IMAGENET_REMEDY)
    try:
        return datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as err:
        raise _missing(what, folder, str(err).rstrip("."), _IMAGENET_REMEDY) from None


def channel_stats(dataset: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of a named dataset's pixels in [0, 1].

    Reads the pixel array the reader holds (`data`: N x H x W or N x H x W x C, uint8) in
    chunks, so it costs a second for MNIST's 60,000 images.
    """
    data = dataset.data
    data = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    pixels = data.reshape(len(data), -1, 1 if data.ndim == 3 else data.shape[-1])
    total = np.zeros(pixels.shape[-1])
    squares = np.zeros(pixels.shape[-1])
    for start in range(0, len(pixels), 4096):
        chunk = pixels[start : start + 4096].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 1))
        squares += (chunk**2).sum(axis=(0, 1))
    count = pixels.shape[0] * pixels.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(v), 4) for v in std)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_md5sums(path: Path) -> dict[str, str]:
    """`md5  name` lines (md5sum's format) -> {name: md5}."""
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


class CIFAR10Binary:
    """CIFAR-10 from the official binary version (`cifar-10-batches-bin/`).

    Each record is 1 label byte followed by 3072 pixel bytes: the 1024 R, 1024 G, then 1024 B
    values of a 32x32 image, row-major. Class names come from `batches.meta.txt`. When the
    folder has an `MD5SUMS` file (md5sum format), the split's files are checked against it.

    Args:
        root: the data folder holding `cifar-10-batches-bin/`.
        split: "train" (data_batch_1..5) or "test" (test_batch).
        transform: applied to each PIL image.
        download: fetch and unpack the official archive when the folder is missing.
        offer_download: missing-data errors suggest `--download` (the caller has that flag).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "test",
        *,
        transform: Callable[[Any], Any] | None = None,
        download: bool = False,
        offer_download: bool = False,
    ) -> None:
        _check_split(split)
        self._remedy = _download_remedy(offer_download)
        self.root = Path(root)
        self.folder = self.root / CIFAR10_FOLDER
        self.split = split
        self.transform = transform
        if download:
            download_dataset("cifar10", self.root)
        self.classes = self._read_classes()
        images, labels = [], []
        for file_name in _CIFAR10_FILES[split]:
            records = self._read_records(file_name)
            labels.append(records[:, 0].astype(np.int64))
            images.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        self.data = np.ascontiguousarray(np.concatenate(images))  # N x 32 x 32 x 3 uint8
        self.targets = np.concatenate(labels).tolist()
        if max(self.targets) >= len(self.classes):
            raise _missing("CIFAR-10", self.folder, "a label is out of range", self._remedy)

    def _read_classes(self) -> list[str]:
        meta = self.folder / "batches.meta.txt"
        if not meta.is_file():
            raise _missing("CIFAR-10", self.folder, "no batches.meta.txt", self._remedy)
        return [line.strip() for line in meta.read_text().splitlines() if line.strip()]

    def _read_records(self, file_name: str) -> np.ndarray:
        path = self.folder / file_name
        if not path.is_file():
            raise _missing("CIFAR-10", self.folder, f"no {file_name}", self._remedy)
        sums_file = self.folder / "MD5SUMS"
        if sums_file.is_file():
            expected = _read_md5sums(sums_file).get(file_name)
            if expected is not None and _md5(path) != expected:
                raise _missing(
                    "CIFAR-10", self.folder, f"{file_name} fails its MD5SUMS check", self._remedy
                )
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % _CIFAR10_RECORD:
            raise _missing(
                "CIFAR-10",
                self.folder,
                f"{file_name} is not a whole number of records",
                self._remedy,
            )
        return raw.reshape(-1, _CIFAR10_RECORD)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        image = Image.fromarray(self.data[index], mode="RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, n={len(self)}, root={str(self.folder)!r})"
        )


def dataset_source(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Which copy of a dataset is in use: its folder and the `SOURCE.txt` beside it, if any.

    The folder is recorded relative to the data directory (model cards travel to other
    machines; the SOURCE.txt text and its sha256 identify the copy), or as given for an
    ImageFolder outside it.
    """
    root = resolve_data_dir(data_dir)
    candidates = [root / f for f in FOLDERS.get(name, (name,))]
    folder = next((c for c in candidates if c.is_dir()), candidates[0])
    source = folder / "SOURCE.txt"
    try:
        shown = folder.relative_to(root).as_posix()
    except ValueError:
        shown = str(folder)
    info: dict[str, Any] = {"folder": shown}
    if source.is_file():
        text = source.read_text(encoding="utf-8").strip()
        info["source"] = text
        info["source_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    else:
        info["source"] = None
    return info


def named_dataset_card(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A model card's `dataset` section for a named dataset's train and test splits (which copy
    it is, see `dataset_source`; the trainer adds the counts)."""
    source = dataset_source(name, data_dir)
    return {
        "name": name,
        "train_split": "train",
        "test_split": "test",
        "folder": source["folder"],
        "source": source["source"],
        "source_sha256": source.get("source_sha256"),
    }
