"""Fine-tuning: start a run from another model's weights, with a new classifier head.

`cnnzoo train ARCH --dataset ... --init FILE` loads a torchvision state dict (an ImageNet
`.pth`, read with `weights_only=True`) or any cnnzoo checkpoint into the architecture: every
tensor whose name and shape fit is kept, the classifier head (`Architecture.head`) is new where
the class count differs, and anything else that does not fit refuses the file, naming the
missing and unexpected tensors. `--freeze` then trains only the new head: the rest keeps its
weights and its batch-norm statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from cnnzoo.errors import InvalidInput
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.architectures import Architecture
from cnnzoo.zoo.checkpoints import read_state_dict

__all__ = ["freeze_all_but_head", "head_train_mode", "load_init"]

_NAMED = 4  # tensors named per kind in a refusal


def _in_head(key: str, head: str) -> bool:
    return key == head or key.startswith(head + ".")


def load_init(model: nn.Module, path: Path, arch: Architecture, *, freeze: bool) -> dict[str, Any]:
    """Load the weights of `path` that fit `model` (an `arch` network); the card's `init` record.

    Returns:
        {"file", "sha256", "from" (the zoo model it was trained as, if it says), "kept" (tensor
        names loaded), "new" (tensor names left at their initialisation), "frozen"}.

    Raises:
        NotFound: no such file.
        InvalidInput: a damaged file, or one of another architecture (names the missing and
            unexpected tensors, and wrong shapes outside the head).
    """
    state, metadata = read_state_dict(path, accept_pth=True, owner=arch.name)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _in_head(k, arch.head)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape) and not _in_head(k, arch.head)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if items:
                more = f" (+{len(items) - _NAMED} more)" if len(items) > _NAMED else ""
                parts.append(f"{label}: {', '.join(items[:_NAMED])}{more}")
        raise InvalidInput(
            f"--init {path.name} is not a {arch.name} state dict ({'; '.join(parts)})"
        )
    kept = [k for k, v in expected.items() if k in state and state[k].shape == v.shape]
    model.load_state_dict({k: state[k] for k in kept}, strict=False)
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "from": metadata.get("zoo_entry"),
        "kept": kept,
        "new": [k for k in expected if k not in kept],
        "frozen": freeze,
    }


def freeze_all_but_head(model: nn.Module, arch: Architecture) -> None:
    """Only the head's parameters keep requiring gradients."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(_in_head(name, arch.head))


def head_train_mode(model: nn.Module, arch: Architecture) -> None:
    """Training mode for the head only: frozen layers keep their batch-norm statistics and
    run without dropout."""
    model.eval()
    model.get_submodule(arch.head).train()
