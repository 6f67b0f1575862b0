"""Weights files written by training: one `.safetensors` per epoch plus the final one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.fileio import atomic_path

if TYPE_CHECKING:
    from torch import nn

__all__ = ["epoch_path", "list_epochs", "save_weights", "EPOCHS_DIR"]

EPOCHS_DIR = "epochs"
_EPOCH_FILE = re.compile(r"^epoch_(\d{3,})\.safetensors$")


def epoch_path(model_dir: Path, epoch: int) -> Path:
    """`<model_dir>/epochs/epoch_NNN.safetensors`."""
    return Path(model_dir) / EPOCHS_DIR / f"epoch_{epoch:03d}.safetensors"


def list_epochs(folder: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every epoch checkpoint, sorted by epoch.

    Args:
        folder: a model folder (with an `epochs/` subfolder) or the `epochs/` folder itself.
    """
    folder = Path(folder)
    if (folder / EPOCHS_DIR).is_dir():
        folder = folder / EPOCHS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Write the model's state dict as `.safetensors` atomically, with string metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
