"""Fine-tuning: start a run from another model's weights, with a new classifier head.

`cnnzoo train ARCH --dataset ... --init SOURCE` loads torchvision's pretrained weights by name
(`torchvision`, `torchvision:IMAGENET1K_V2`: `cnnzoo.zoo.pretrained`), a torchvision state dict
file (an ImageNet `.pth`, read with `weights_only=True`) or any cnnzoo checkpoint into the
architecture: every tensor whose name and shape fit is kept, the classifier head
(`Architecture.head`) is replaced where the class count differs, and anything else that does
not fit refuses the weights, naming the missing and unexpected tensors. Then either only the
new head trains (`--freeze`: the rest keeps its weights and its batch-norm statistics), or all
layers do, the pretrained ones at a lower rate (`--backbone-lr-scale`, `cnnzoo.zoo.recipe`).
The card's `init` says which tensors were kept, replaced, new and frozen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from cnnzoo.errors import InvalidInput
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.architectures import Architecture
from cnnzoo.zoo.checkpoints import read_state_dict
from cnnzoo.zoo.pretrained import PretrainedWeights

__all__ = ["freeze_all_but_head", "head_train_mode", "in_head", "load_init"]

_NAMED = 4  # tensors named per kind in a refusal


def in_head(key: str, head: str) -> bool:
    """Whether the tensor or parameter `key` belongs to the module `head`."""
    return key == head or key.startswith(head + ".")


def load_init(
    model: nn.Module,
    source: Path | PretrainedWeights,
    arch: Architecture,
    *,
    freeze: bool,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the weights of `source` that fit `model` (an `arch` network); the card's `init`.

    Returns:
        {"source" ("torchvision" or "file"), "file", "sha256", "weights" (torchvision's enum
        member) or "from" (the zoo model a file was trained as, if it says), "kept" (tensors
        loaded), "replaced" (head tensors of another shape, left at their initialisation),
        "new" (tensors the weights do not have), "frozen" (parameters that will not train),
        "freeze"}.

    Raises:
        NotFound: no such file.
        Unavailable: torchvision's weights are not cached and cannot be downloaded.
        IntegrityError: they do not match their hash.
        InvalidInput: a damaged file, or weights of another architecture (names the missing
            and unexpected tensors, and wrong shapes outside the head).
    """
    if isinstance(source, PretrainedWeights):
        state = source.state_dict(progress=progress)
        record: dict[str, Any] = {"source": "torchvision", **source.record()}
        label = source.spec
    else:
        state, metadata = read_state_dict(source, accept_pth=True, owner=arch.name)
        record = {
            "source": "file",
            "file": source.name,
            "sha256": sha256_file(source),
            "from": metadata.get("zoo_entry"),
        }
        label = source.name
    expected = model.state_dict()
    _check_fits(label, arch, state, expected)
    kept = [k for k, v in expected.items() if k in state and state[k].shape == v.shape]
    model.load_state_dict({k: state[k] for k in kept}, strict=False)
    frozen = [n for n, _ in model.named_parameters() if not in_head(n, arch.head)] if freeze else []
    return {
        **record,
        "kept": kept,
        "replaced": [k for k in expected if k in state and k not in kept],
        "new": [k for k in expected if k not in state],
        "frozen": frozen,
        "freeze": freeze,
    }


def _check_fits(
    label: str, arch: Architecture, state: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Refuse weights whose tensors outside the head do not match the architecture's."""
    missing = [k for k in expected if k not in state and not in_head(k, arch.head)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape) and not in_head(k, arch.head)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for kind, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", mismatched),
    ):
        if items:
            more = f" (+{len(items) - _NAMED} more)" if len(items) > _NAMED else ""
            parts.append(f"{kind}: {', '.join(items[:_NAMED])}{more}")
    raise InvalidInput(f"--init {label} is not a {arch.name} state dict ({'; '.join(parts)})")


def freeze_all_but_head(model: nn.Module, arch: Architecture) -> None:
    """Only the head's parameters keep requiring gradients."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(in_head(name, arch.head))


def head_train_mode(model: nn.Module, arch: Architecture) -> None:
    """Training mode for the head only: frozen layers keep their batch-norm statistics and
    run without dropout."""
    model.eval()
    model.get_submodule(arch.head).train()
