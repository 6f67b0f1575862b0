"""Datasets: MNIST (torchvision), CIFAR-10 in the official binary layout (our reader), ImageFolder.

The data folder is `--data-dir`, else `$CNNZOO_DATA`, else `./data`, in torchvision's layout:
`<root>/MNIST/raw/*-ubyte`, `<root>/cifar-10-batches-bin/*.bin`, `<root>/imagenet/{train,val}/`.
Missing or damaged data raises one `DatasetNotFound` naming the folder looked in and the ways to
point at data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnzoo.errors import DatasetNotFound, InvalidInput

__all__ = [
    "DATASETS",
    "SPLITS",
    "CIFAR10Binary",
    "dataset_source",
    "get_dataset",
    "resolve_data_dir",
]

DATASETS = ("mnist", "cifar10", "imagenet")
SPLITS = ("train", "test")

CIFAR10_FOLDER = "cifar-10-batches-bin"
# The official binary archive (https://www.cs.toronto.edu/~kriz/cifar.html), for --download.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
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
_IMAGE_FOLDER_REMEDY = (
    "give the path of a folder with one subfolder of images per class "
    "(an image folder cannot be downloaded)"
)
_IMAGENET_REMEDY = (
    f"{_POINT_AT_DATA}, holding imagenet/train/ and imagenet/val/ with one subfolder of images "
    f"per class (ImageNet cannot be downloaded for you)"
)


def _download_remedy(offer_download: bool) -> str:
    """How to get MNIST/CIFAR-10; names --download only for callers that have that flag."""
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
) -> Any:
    """A torch Dataset of (tensor, label) pairs.

    Args:
        name: "mnist", "cifar10", "imagenet" (an ImageFolder at `<data>/imagenet/{train,val}`),
            or the path of any ImageFolder (one subfolder per class).
        split: "train" or "test" (ignored for an ImageFolder path).
        data_dir: the data folder; see `resolve_data_dir`.
        transform: applied to each PIL image; default `ToTensor()`.
        download: fetch MNIST/CIFAR-10 with torchvision's downloader when missing.
        offer_download: the caller has a `--download` flag: a missing MNIST/CIFAR-10 error
            suggests it (never for image folders, which cannot be downloaded).

    Raises:
        DatasetNotFound: the data is missing or damaged (names the folder looked in).
        InvalidInput: an unknown split.
    """
    from torchvision import datasets, transforms

    transform = transform if transform is not None else transforms.ToTensor()
    root = resolve_data_dir(data_dir)
    key = str(name)
    if key == "mnist":
        _check_split(split)
        try:
            return datasets.MNIST(
                str(root), train=split == "train", transform=transform, download=download
            )
        except RuntimeError:
            raise _missing(
                "MNIST",
                root / "MNIST" / "raw",
                "expected the *-idx?-ubyte files",
                _download_remedy(offer_download),
            ) from None
    if key == "cifar10":
        _check_split(split)
        return CIFAR10Binary(
            root, split, transform=transform, download=download, offer_download=offer_download
        )
    if key == "imagenet":
        _check_split(split)
        folder = root / "imagenet" / ("train" if split == "train" else "val")
        return _image_folder(folder, transform, "ImageNet (an ImageFolder)", _IMAGENET_REMEDY)
    if key in DATASETS or "/" in key or os.sep in key or Path(key).exists():
        return _image_folder(Path(key), transform, "image folder", _IMAGE_FOLDER_REMEDY)
    raise InvalidInput(
        f"unknown dataset {key!r}; use one of {', '.join(DATASETS)} or the path of an image folder"
    )


def _image_folder(folder: Path, transform: Callable[[Any], Any], what: str, remedy: str) -> Any:
    from torchvision import datasets

    if not folder.is_dir():
        raise _missing(what, folder, "no such folder", remedy)
    try:
        return datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as err:
        raise _missing(what, folder, str(err).rstrip("."), remedy) from None


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
        if download and not self.folder.is_dir():
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(CIFAR10_URL, str(self.root), md5=CIFAR10_ARCHIVE_MD5)
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
    folder = {"mnist": root / "MNIST", "cifar10": root / CIFAR10_FOLDER}.get(name, root / name)
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
