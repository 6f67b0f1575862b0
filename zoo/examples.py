"""Copy the examples shipped in the package (`cnnzoo.examples`) into a folder of the user's.

They are package data, so `pip install cnnzoo` carries them; `cnnzoo examples DEST` puts them
where the README's commands (`cnnzoo classify`, `cnnzoo job`) can name them. The copy is built
beside DEST and renamed into place: an interrupted copy leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from cnnzoo.errors import AlreadyExists, InvalidInput

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["copy_examples"]

_PACKAGE = "cnnzoo.examples"
_SKIP = {"__init__.py", "__pycache__"}


def copy_examples(dest: Path) -> dict[str, int]:
    """Copy the examples into `dest` (new, or an empty folder); returns counts per kind.

    Raises:
        AlreadyExists: `dest` exists and is not empty.
        InvalidInput: `dest` is a file.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise InvalidInput(f"{dest} is a file, not a folder")
    if dest.is_dir() and any(dest.iterdir()):
        raise AlreadyExists(f"{dest} is not empty; name a new or empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _copy(files(_PACKAGE), staging)
        if dest.is_dir():
            dest.rmdir()  # empty: checked above
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "digits": len(list(dest.glob("digits/*/*.png"))),
        "cifar10": len(list(dest.glob("cifar10/*/*.png"))),
        "jobs": len(list(dest.glob("jobs/*.toml"))),
    }


def _copy(source: Traversable, target: Path) -> None:
    for item in source.iterdir():
        if item.name in _SKIP:
            continue
        if item.is_dir():
            (target / item.name).mkdir()
            _copy(item, target / item.name)
        else:
            (target / item.name).write_bytes(item.read_bytes())
