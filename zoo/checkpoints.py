"""Weights files written by training: one `.safetensors` per epoch plus the final one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from cnnzoo.fileio import atomic_path

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "decode_state",
    "encode_state",
    "epoch_path",
    "list_epochs",
    "read_metadata",
    "save_weights",
    "EPOCHS_DIR",
    "WEIGHT_DTYPES",
]

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


WEIGHT_DTYPES = ("float32", "float16", "int8")
# An int8 tensor is stored with its per-output-channel float32 scales under `<key>:scale`
# (":" never appears in a state-dict key).
_SCALE = ":scale"


def encode_state(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The tensors a weights file stores for `state` with floating-point weights as `dtype`.

    float16 halves every floating tensor; int8 quantises each weight of two or more dimensions
    symmetrically per output channel (scale = max |w| / 127) and keeps 1-D tensors (biases,
    batch-norm statistics: few and sensitive) in float32.
    """
    import torch

    stored = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if not value.is_floating_point() or dtype == "float32":
            stored[key] = value.contiguous()
        elif dtype == "float16":
            stored[key] = value.half().contiguous()
        elif value.ndim < 2:
            stored[key] = value.float().contiguous()
        else:
            scale = value.float().abs().flatten(1).amax(1).clamp_min(1e-12) / 127
            quantised = torch.round(value / scale.view(-1, *[1] * (value.ndim - 1)))
            stored[key] = quantised.clamp(-127, 127).to(torch.int8).contiguous()
            stored[key + _SCALE] = scale.contiguous()
    return stored


def decode_state(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict from what `encode_state` stored (int8 tensors back to float32); tensors of
    other files pass through unchanged."""
    state = {k: v for k, v in stored.items() if not k.endswith(_SCALE)}
    for key, value in state.items():
        scale = stored.get(key + _SCALE)
        if scale is not None:
            state[key] = value.float() * scale.view(-1, *[1] * (value.ndim - 1))
    return state


def save_weights(
    model: nn.Module, path: Path, metadata: dict[str, str], dtype: str = "float32"
) -> None:
    """Write the model's state dict as `.safetensors` atomically, with string metadata.

    Floating-point weights are stored as `dtype` (see `encode_state`); loading
    (`cnnzoo.zoo.build_model`) decodes them to float32. The same weights and metadata always
    give the same bytes (see `METADATA_KEY`).
    """
    from safetensors.torch import save_file

    packed = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(encode_state(model.state_dict(), dtype), str(tmp), metadata=packed)


def read_metadata(raw: dict[str, str] | None) -> dict[str, str]:
    """The metadata `save_weights` stored, from a file's raw safetensors metadata.

    Files written by other tools keep their own flat metadata, returned as it is.
    """
    raw = dict(raw or {})
    if METADATA_KEY in raw:
        return dict(json.loads(raw[METADATA_KEY]))
    return raw
