"""Weights files written by training: one `.safetensors` per epoch plus the final one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.fileio import atomic_path

if TYPE_CHECKING:
    from torch import nn

__all__ = ["epoch_path", "list_epochs", "read_metadata", "save_weights", "EPOCHS_DIR"]

EPOCHS_DIR = "epochs"
# safetensors writes its metadata map in a random order (a hash map), so a file with several
# metadata keys gets different bytes, and a different sha256, on every save. One key holding
# sorted JSON keeps the same weights byte-identical.
METADATA_KEY = "cnnzoo"
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


def save_weights(
    model: nn.Module, path: Path, metadata: dict[str, str], dtype: str = "float32"
) -> None:
    """Write the model's state dict as `.safetensors` atomically, with string metadata.

    Floating-point tensors are stored as `dtype` ("float32" or "float16"); loading casts them
    back to the model's float32. The same weights and metadata always give the same bytes (see
    `METADATA_KEY`).
    """
    import torch
    from safetensors.torch import save_file

    store = getattr(torch, dtype)
    state = {
        k: (v.to(store) if v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    packed = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=packed)


def read_metadata(raw: dict[str, str] | None) -> dict[str, str]:
    """The metadata `save_weights` stored, from a file's raw safetensors metadata.

    Files written by other tools keep their own flat metadata, returned as it is.
    """
    raw = dict(raw or {})
    if METADATA_KEY in raw:
        return dict(json.loads(raw[METADATA_KEY]))
    return raw
