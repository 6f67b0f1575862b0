"""The zoo's registry: which models exist, what they are bound to, and how to build them.

An entry is an architecture bound to a dataset (labels, preprocessing, training recipe, shipped
weights). Entries are plain data and name their builder as "module:function", so listing the zoo
(`cnnzoo list`, `cnnzoo --help`) never imports torch; `build_model` imports it when needed.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.errors import AlreadyExists, NotFound
from cnnzoo.zoo.checkpoints import WEIGHT_DTYPES, load_weights_file
from cnnzoo.zoo.preprocess import Preprocess
from cnnzoo.zoo.recipe import Recipe

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "WEIGHTS_ROOT",
    "ZooEntry",
    "build_model",
    "get_entry",
    "list_models",
    "register_model",
    "shipped_weights_dir",
]

# Shipped weights live in the package: zoo/weights/<entry>/{model.safetensors, card.json, epochs/}.
WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo: an architecture bound to a dataset.

    Attributes:
        name: registry name, e.g. "lenet5-mnist".
        family: "lenet", "alexnet" or "resnet".
        dataset: "mnist", "cifar10" or "imagenet".
        num_classes: number of output logits.
        labels: class names in class-index order.
        preprocess: how an image becomes the model input.
        input_shape: (C, H, W) of one model input.
        recipe: training defaults.
        weights_dir: folder with the shipped `model.safetensors`, `card.json` and
            `epochs/epoch_NNN.safetensors`, or None when the zoo ships no weights for it.
        builder: "module:function" building the randomly initialised architecture.
        architecture: a short human description of the architecture.
        paper: link to the paper the architecture comes from.
        notes: what a model card should say about deviations from the paper.
        torchvision_state_dicts: accept torchvision `.pth` state dicts as weights files.
        weights_dtype: how training stores floating-point weights: "float32", or "float16" /
            "int8" to shrink a large model's files (see `cnnzoo.zoo.checkpoints.encode_state`); the
            card measures the weights as stored.
    """

    name: str
    family: str
    dataset: str
    num_classes: int
    labels: tuple[str, ...]
    preprocess: Preprocess
    input_shape: tuple[int, int, int]
    recipe: Recipe
    weights_dir: Path | None
    builder: str = field(repr=False)
    architecture: str = ""
    paper: str = ""
    notes: str = ""
    torchvision_state_dicts: bool = False
    weights_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.weights_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"{self.name}: weights_dtype must be one of {WEIGHT_DTYPES}")
        if len(self.labels) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.labels)} labels for {self.num_classes} classes"
            )
        expected = (self.preprocess.channels, *self.preprocess.input_size)
        if tuple(self.input_shape) != expected:
            raise ValueError(
                f"{self.name}: input_shape {self.input_shape} != preprocess {expected}"
            )

    @property
    def weights_file(self) -> Path | None:
        """The shipped `model.safetensors`, or None."""
        return None if self.weights_dir is None else self.weights_dir / "model.safetensors"

    def card(self) -> dict[str, Any] | None:
        """The shipped model card (card.json) as a dict, or None when there is none."""
        if self.weights_dir is None or not (self.weights_dir / "card.json").is_file():
            return None
        return json.loads((self.weights_dir / "card.json").read_text(encoding="utf-8"))

    def builder_function(self) -> Callable[..., Any]:
        """Import and return the builder (imports torch).

        The builder is named as "module:function" and imported here, on first use, so that
        listing the zoo and `cnnzoo --help` never import torch.
        """
        module_name, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module_name), function)


_ENTRIES: dict[str, ZooEntry] = {}


def shipped_weights_dir(name: str) -> Path | None:
    """`zoo/weights/<name>` when it holds a `model.safetensors`, else None."""
    folder = WEIGHTS_ROOT / name
    return folder if (folder / "model.safetensors").is_file() else None


def register_model(entry: ZooEntry) -> ZooEntry:
    """Add an entry to the zoo; a name registered twice raises `AlreadyExists`."""
    if entry.name in _ENTRIES:
        raise AlreadyExists(f"model {entry.name!r} is already registered")
    _ENTRIES[entry.name] = entry
    return entry


def _as_patterns(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def list_models(
    include: str | Sequence[str] | None = None, exclude: str | Sequence[str] | None = None
) -> list[str]:
    """Sorted names of the registered entries.

    Args:
        include: fnmatch pattern(s); keep names matching any of them (default: all).
        exclude: fnmatch pattern(s); drop names matching any of them.
    """
    names = sorted(_ENTRIES)
    if include is not None:
        patterns = _as_patterns(include)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    for pattern in _as_patterns(exclude):
        names = [n for n in names if not fnmatch.fnmatchcase(n, pattern)]
    return names


def get_entry(name: str) -> ZooEntry:
    """The entry called `name`; an unknown name raises `NotFound` listing the known ones."""
    try:
        return _ENTRIES[name]
    except (KeyError, TypeError):
        raise NotFound(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


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
        load_weights_file(
            model, Path(weights), entry.name, accept_pth=entry.torchvision_state_dicts
        )
    return model.eval()
