"""Build a zoo model and load weights into it, refusing anything that does not fit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.errors import InvalidInput, NotFound
from cnnzoo.zoo._registry import ZooEntry, get_entry
from cnnzoo.zoo.checkpoints import decode_state, read_metadata

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["build_model", "load_weights_file", "read_state_dict"]

_TORCH_SUFFIXES = (".pth", ".pt")


def build_model(name: str, *, weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """Build the zoo model `name`, in eval mode.

    Args:
        name: a registered entry (see `list_models()`).
        weights: None for random initialisation, "default" for the weights the zoo ships, or
            a path to a `.safetensors` state dict (a torchvision `.pth` state dict is accepted
            for the torchvision entries).

    Raises:
        NotFound: unknown model, no shipped weights, or a missing weights file.
        InvalidInput: a corrupt weights file or one made for another architecture.
    """
    entry = get_entry(name)
    model = entry.builder_function()(num_classes=entry.num_classes)
    if weights is not None:
        if isinstance(weights, str) and weights == "default":
            if entry.weights_file is None:
                raise NotFound(
                    f"{name} has no shipped weights; train it with `cnnzoo train {name}` "
                    "or pass a weights file"
                )
            weights = entry.weights_file
        load_weights_file(model, entry, Path(weights))
    return model.eval()


def read_state_dict(path: Path, entry: ZooEntry) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A state dict and its metadata from `.safetensors` (or `.pth` for torchvision entries)."""
    import torch

    if not path.is_file():
        raise NotFound(f"weights file {path} does not exist")
    if path.suffix in _TORCH_SUFFIXES:
        if not entry.torchvision_state_dicts:
            raise InvalidInput(
                f"{path.name}: {entry.name} loads .safetensors weights only "
                f"(.pth is accepted for the torchvision entries)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a bad pickle/zip
            raise InvalidInput(f"{path} is not a readable torch state dict ({err})") from None
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise InvalidInput(f"{path} does not hold a state dict of tensors")
        return state, {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = read_metadata(handle.metadata())
            stored = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as err:  # SafetensorError, OSError, ValueError on a damaged header
        raise InvalidInput(
            f"{path} is not a valid .safetensors file (corrupt or truncated?): {err}"
        ) from None
    return decode_state(stored), metadata


def load_weights_file(model: nn.Module, entry: ZooEntry, path: Path) -> dict[str, str]:
    """Load `path` into `model` (strictly); returns the file's safetensors metadata."""
    state, metadata = read_state_dict(path, entry)
    trained_for = metadata.get("zoo_entry")
    if trained_for and trained_for != entry.name:
        raise InvalidInput(f"{path.name} holds weights of {trained_for}, not {entry.name}")
    _check_fits(model, state, entry, path)
    model.load_state_dict(state, strict=True)
    return metadata


def _check_fits(model: nn.Module, state: dict[str, Any], entry: ZooEntry, path: Path) -> None:
    """Refuse a state dict with missing, unexpected or wrongly shaped tensors, naming a few."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    raise InvalidInput(
        f"{path.name} does not fit the {entry.name} architecture ({'; '.join(parts)})"
    )
