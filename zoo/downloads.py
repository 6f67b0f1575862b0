"""Download the named datasets that can be downloaded: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100.

`--download` and `make data` (scripts/download_data.py) come here. Each file is fetched from
the dataset's official sources in turn (torchvision's lists, md5-checked) into a hidden staging
folder inside the data folder, unpacked there, and moved into the layout `cnnzoo` reads only
when everything arrived: offline, or with a file that fails its checksum, the command fails with
one line naming each source and why it failed, and nothing is left behind (not even the data
folder, when it had to be created).

`CNNZOO_DATA_MIRROR=URL` fetches the same file names from `URL/` instead (a server inside a
network without internet access); the checksums still apply.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from cnnzoo.errors import IntegrityError, InvalidInput, Unavailable
from cnnzoo.zoo.fetch import (
    TransferFailed,
    env_mirror,
    fetch_file,
    made_folders,
    remove_made_folders,
)

__all__ = ["DOWNLOADABLE", "MIRROR_ENV", "DatasetFiles", "dataset_files", "download_dataset"]

MIRROR_ENV = "CNNZOO_DATA_MIRROR"
DOWNLOADABLE = ("mnist", "fashion-mnist", "cifar10", "cifar100")
# The official binary CIFAR-10 archive (https://www.cs.toronto.edu/~kriz/cifar.html): the
# layout `cnnzoo.zoo.datasets.CIFAR10Binary` reads.
_CIFAR10_BINARY = ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")
_KRIZ = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class DatasetFiles:
    """Where a dataset's files come from and where they go.

    Attributes:
        title: the dataset's name in messages.
        folder: the folder under the data folder that holds the unpacked files.
        files: (file name, md5) of each file to fetch.
        bases: the base URLs tried in turn (the file name is appended).
        unpacked: the folder inside a tar archive that becomes `folder` (None: each file is
            gunzipped beside itself, MNIST's way).
    """

    title: str
    folder: str
    files: tuple[tuple[str, str], ...]
    bases: tuple[str, ...]
    unpacked: str | None = None

    def present(self, root: Path) -> bool:
        """Whether the unpacked files are in `root` already."""
        target = root / self.folder
        if self.unpacked is not None:
            return target.is_dir() and any(target.iterdir())
        return all((target / name.removesuffix(".gz")).is_file() for name, _ in self.files)


def dataset_files(name: str) -> DatasetFiles:
    """The sources of a downloadable dataset (torchvision's lists; imports torchvision)."""
    from torchvision import datasets

    if name in ("mnist", "fashion-mnist"):
        reader = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        return DatasetFiles(
            reader.__name__, f"{reader.__name__}/raw", tuple(reader.resources),
            tuple(reader.mirrors),
        )  # fmt: skip
    if name == "cifar10":
        return DatasetFiles("CIFAR-10", "cifar-10-batches-bin", (_CIFAR10_BINARY,), (_KRIZ,),
                            unpacked="cifar-10-batches-bin")  # fmt: skip
    if name == "cifar100":
        files = ((datasets.CIFAR100.filename, datasets.CIFAR100.tgz_md5),)
        return DatasetFiles("CIFAR-100", datasets.CIFAR100.base_folder, files, (_KRIZ,),
                            unpacked=datasets.CIFAR100.base_folder)  # fmt: skip
    raise InvalidInput(
        f"{name} cannot be downloaded; downloadable datasets: {', '.join(DOWNLOADABLE)}"
    )


def download_dataset(
    name: str,
    root: Path,
    *,
    mirror: str | None = None,
    progress: bool = True,
    files: DatasetFiles | None = None,
) -> Path:
    """Fetch dataset `name` into the data folder `root` unless it is there; its folder.

    Args:
        name: one of `DOWNLOADABLE`.
        root: the data folder (created when missing, removed again if the download fails).
        mirror: a base URL to fetch the files from instead of the official sources (default:
            `$CNNZOO_DATA_MIRROR`).
        progress: progress bars (on a terminal only).
        files: the sources and layout (default: `dataset_files(name)`).

    Raises:
        Unavailable: a file could not be fetched from any source (each is named with its
            reason); nothing is left behind.
        IntegrityError: a file arrived but failed its md5 from every source.
    """
    files = files or dataset_files(name)
    target = root / files.folder
    if files.present(root):
        return target
    mirror = mirror if mirror is not None else env_mirror(MIRROR_ENV)
    bases = (mirror,) if mirror else files.bases
    made = made_folders(root)
    stage = root / f".{files.folder.split('/')[0]}.download-{secrets.token_hex(4)}"
    try:
        stage.mkdir()
        for file_name, md5 in files.files:
            _fetch_one(files, file_name, md5, bases, stage, target, progress)
        unpacked = _unpack(files, stage)
        made += made_folders(target)
        for path in sorted(unpacked.iterdir()):
            path.replace(target / path.name)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        remove_made_folders(sorted(set(made), key=lambda p: len(p.parts), reverse=True))
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return target


def _fetch_one(
    files: DatasetFiles,
    file_name: str,
    md5: str,
    bases: tuple[str, ...],
    stage: Path,
    target: Path,
    progress: bool,
) -> None:
    """Fetch one file into `stage` from the first source that gives it with the right md5."""
    failures: list[str] = []
    integrity = False
    for base in bases:
        url = base.rstrip("/") + "/" + file_name
        try:
            fetch_file(url, stage / file_name, md5=md5, progress=progress)
            return
        except TransferFailed as err:
            failures.append(f"{base} ({err.cause})")
        except IntegrityError as err:
            integrity = True
            failures.append(f"{base} (the file failed its md5 check: {err.reason})")
    where = ", ".join(n for n, _ in files.files)
    message = (
        f"could not download {files.title}: {file_name} from {' or '.join(failures)}; nothing "
        f"was written. Put {where} (or their unpacked files) in {target}, or set {MIRROR_ENV} "
        "to a server holding them"
    )
    raise (IntegrityError if integrity and len(failures) == 1 else Unavailable)(message)


def _unpack(files: DatasetFiles, stage: Path) -> Path:
    """Unpack the fetched files inside `stage`; the folder holding the final files."""
    from torchvision.datasets.utils import extract_archive

    if files.unpacked is None:  # MNIST: each .gz beside itself, the .gz kept (torchvision's way)
        for file_name, _ in files.files:
            extract_archive(str(stage / file_name), str(stage))
        return stage
    archive = stage / files.files[0][0]
    extract_archive(str(archive), str(stage))
    archive.unlink()
    unpacked = stage / files.unpacked
    if not unpacked.is_dir():
        raise IntegrityError(f"{archive.name} did not hold a {files.unpacked}/ folder")
    return unpacked
