"""Model cards: the JSON written beside trained weights (`card.json`), its schema and assembly."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo import __version__
from cnnzoo.fileio import sha256_file

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "CARD_SCHEMA",
    "OPTIONAL_KEYS",
    "build_card",
    "hardware_info",
    "software_info",
    "utc_now",
    "validate_card",
]

# Required keys, and the required keys of nested objects. Cards may not carry other top-level keys.
CARD_SCHEMA: dict[str, tuple[str, ...] | None] = {
    "model": None,
    "family": None,
    "architecture": None,
    "paper": None,
    "notes": None,
    "dataset": (
        "name", "train_split", "test_split", "n_train", "n_test", "folder", "source",
        "source_sha256", "train_subset", "test_subset",
    ),
    "metrics": ("top1", "top5", "n", "loss", "per_class"),
    "epochs": None,
    "history": None,
    "wall_time_seconds": None,
    "hardware": ("cpu", "cpu_count", "torch_threads", "device", "gpu"),
    "software": ("python", "torch", "torchvision", "cnnzoo", "platform"),
    "command": None,
    "seed": None,
    "recipe": None,
    "weights": ("file", "sha256", "num_params", "bytes"),
    "input_shape": None,
    "preprocess": None,
    "labels": None,
    "created": None,
}  # fmt: skip

# Keys cards may carry (cards written before they existed lack them): the architecture's name in
# `cnnzoo.zoo.architectures`, what a fine-tuned run started from (`cnnzoo train --init`), what
# was chosen for a run from its data (`cnnzoo.zoo.folder_defaults`, `--lr auto`), and which
# epoch a run on other data kept as its best (`best.safetensors`).
OPTIONAL_KEYS = ("arch", "init", "chosen", "selection")

_HISTORY_KEYS = ("epoch", "train_loss", "train_top1", "test_top1", "lr", "seconds")


def validate_card(card: dict[str, Any]) -> list[str]:
    """Problems with a card (empty when it follows the schema)."""
    problems = [f"missing key {key!r}" for key in CARD_SCHEMA if key not in card]
    problems += [
        f"unknown key {key!r}"
        for key in card
        if key not in CARD_SCHEMA and key not in OPTIONAL_KEYS
    ]
    for key, required in CARD_SCHEMA.items():
        if required and isinstance(card.get(key), dict):
            problems += [f"missing key {key}.{sub!r}" for sub in required if sub not in card[key]]
    history = card.get("history")
    if not isinstance(history, list) or len(history) != card.get("epochs"):
        problems.append("history must have one record per epoch")
    else:
        for record in history:
            problems += [f"history record lacks {k!r}" for k in _HISTORY_KEYS if k not in record]
    metrics = card.get("metrics", {})
    for key in ("top1", "top5"):
        value = metrics.get(key)
        if not isinstance(value, float) or not 0.0 <= value <= 1.0:
            problems.append(f"metrics.{key} must be a fraction in [0, 1]")
    if len(metrics.get("per_class", {})) != len(card.get("labels", [])):
        problems.append("metrics.per_class must have one value per label")
    return problems


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: str) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": gpu,
    }
    if gpu is not None:  # how the run trained there: layout, bf16, fused steps, compilation
        from cnnzoo.zoo.cuda_training import CudaTraining

        info["cuda_training"] = CudaTraining.from_environment().to_dict()
    return info


def software_info() -> dict[str, str]:
    import torch
    import torchvision

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cnnzoo": __version__,
        "platform": platform.platform(),
    }


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_card(
    fields: dict[str, Any],
    *,
    model: nn.Module,
    weights: Path,
    seed: int,
    dataset: dict[str, Any],
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    wall_time_seconds: float,
    hardware: dict[str, Any],
    command: str,
    init: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of a finished run whose final weights are the file `weights`.

    Args:
        fields: what the run trained (`ZooEntry.card_fields()`: model, arch, family,
            architecture, paper, notes, recipe, input_shape, preprocess, labels).
        model: the trained model (its parameters are counted).
        weights: the final weights file (its sha256 and size are recorded).
        seed: the run's seed.
        dataset: the card's `dataset` section (see `CARD_SCHEMA`).
        metrics: the test metrics of the final weights (`cnnzoo.zoo.evaluate.evaluate`).
        history: one record per epoch.
        wall_time_seconds: training time over all sessions of the run.
        hardware: `hardware_info(...)` plus anything the run adds.
        command: the command line(s) that made the run.
        init: what a fine-tuned run started from (file, sha256, tensors kept and new).
        extra: other `OPTIONAL_KEYS` (chosen, selection).

    Raises:
        AssertionError: the card breaks the schema (a bug in the caller, not a user error).
    """
    card = {
        **{key: fields[key] for key in ("model", "arch", "family", "architecture", "paper")},
        "notes": fields["notes"],
        "dataset": dataset,
        "metrics": metrics,
        "epochs": fields["recipe"]["epochs"],
        "history": history,
        "wall_time_seconds": round(wall_time_seconds, 1),
        "hardware": hardware,
        "software": software_info(),
        "command": command,
        "seed": seed,
        "recipe": fields["recipe"],
        "weights": {
            "file": weights.name,
            "sha256": sha256_file(weights),
            "num_params": sum(p.numel() for p in model.parameters()),
            "bytes": weights.stat().st_size,
        },
        "input_shape": fields["input_shape"],
        "preprocess": fields["preprocess"],
        "labels": fields["labels"],
        "created": utc_now(),
    }
    if init is not None:
        card["init"] = init
    card.update(extra or {})
    problems = validate_card(card)
    assert not problems, problems
    return card
