"""The job's world: the model with its weights, the dataset and the model's layer table, opened
once and shared by validation (each analysis resolves its options against it) and the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzoo import zoo
from cnnzoo.errors import CnnzooError, JobFileError, LayerNotFound, NotFound
from cnnzoo.interpret.explain import takes_layer
from cnnzoo.interpret.layers import LayerInfo, describe_layers
from cnnzoo.interpret.methods import METHODS, get_method
from cnnzoo.interpret.modules import get_layer
from cnnzoo.interpret.projection import Unit, project_units
from cnnzoo.interpret.rules import Rule
from cnnzoo.zoo.datasets import DATASETS, get_dataset

__all__ = ["DatasetSpec", "World", "open_world"]


@dataclass(frozen=True)
class DatasetSpec:
    """Which images: a dataset name or ImageFolder path, a split, and optionally the first
    `subset` images. `batch_size` fixes the scan's batches (see `cnnzoo.interpret.scan`)."""

    name: str
    split: str = "test"
    subset: int | None = None
    batch_size: int = 256
    num_workers: int = 0


@dataclass
class World:
    """What a job runs on.

    Attributes:
        entry: the zoo entry.
        model: the model with the job's weights, in eval mode (on the CPU until the run moves it).
        weights_file: the file the weights came from (None: random initialisation).
        dataset: the dataset with the entry's preprocessing.
        images: how many of its images the job uses (the first ones).
        layers: `describe_layers` of the model, by name.
        base: the job file's folder, against which relative paths resolve.
        source: the job file's name, for messages.
    """

    entry: Any
    model: nn.Module
    weights_file: Path | None
    dataset: Any
    images: int
    layers: dict[str, LayerInfo]
    base: Path
    source: str
    _refusals: dict[tuple[str, ...], CnnzooError | None] = field(default_factory=dict, repr=False)

    def resolve_path(self, value: str | Path) -> Path:
        """A path from the job file, relative to the job file's folder."""
        return _resolve(self.base, value)

    def build(self, weights: str | Path | None) -> nn.Module:
        """Another instance of the job's architecture (e.g. with an earlier epoch's weights)."""
        return zoo.build_model(self.entry, weights=weights)

    # -- layers, for resolving options -----------------------------------------------------

    @property
    def selectable(self) -> list[str]:
        """Layers that run once per forward pass, in execution order."""
        return [name for name, info in self.layers.items() if info.selectable]

    @property
    def spatial(self) -> list[str]:
        """Selectable layers whose units have a receptive field."""
        return [n for n in self.selectable if self.layers[n].receptive_field is not None]

    def of_kind(self, *kinds: str) -> list[str]:
        """Selectable layers of the given module classes ("Conv2d", "Linear", ...)."""
        return [n for n in self.selectable if self.layers[n].kind in kinds]

    @property
    def randomisable(self) -> list[str]:
        """Selectable layers with parameters they can re-initialise (`reset_parameters`)."""
        return [
            n
            for n in self.selectable
            if self.layers[n].params
            and callable(getattr(get_layer(self.model, n), "reset_parameters", None))
        ]

    def layer(self, where: str, name: str, valid: Sequence[str] | None = None) -> str:
        """`name` if it is one of `valid` (default: the spatial layers), else `LayerNotFound`
        naming `where`, why (unknown, or run more than once per forward pass) and the valid
        layers."""
        valid = self.spatial if valid is None else valid
        if name not in valid:
            info = self.layers.get(name)
            why = "unknown or unusable layer"
            if info is not None and info.calls > 1:
                why = (
                    f"layer {name!r} runs {info.calls} times per forward pass, so it has no "
                    "single output; pick a module that runs once (e.g. the convolution before a "
                    "reused ReLU, or the block that contains it). Valid layers:"
                )
                raise LayerNotFound(f"{where}: {why} {', '.join(valid)}")
            raise LayerNotFound(f"{where}: {why} {name!r}; valid layers: {', '.join(valid)}")
        return name

    # -- what the run would refuse, found before it starts -----------------------------------

    def _refuse(self, where: str, key: tuple[str, ...], attempt: Any) -> None:
        """Run `attempt()` once per `key` (on one example input) and raise what it raised,
        prefixed with `where`."""
        if key not in self._refusals:
            try:
                attempt()
                self._refusals[key] = None
            except CnnzooError as err:
                self._refusals[key] = err
        err = self._refusals[key]
        if err is not None:
            raise type(err)(f"{where}: {err.reason}") from None

    def _example(self) -> torch.Tensor:
        param = next(self.model.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        return torch.zeros((1, *self.entry.input_shape), dtype=dtype)

    def check_method(self, where: str, method: str, layer: str | None = None) -> None:
        """Refuse, naming `where`, an attribution method the model cannot be explained with (a
        ReLU rule on a model with another activation, a Grad-CAM layer that runs twice): the
        method is run once on an example input."""

        def attempt() -> None:
            cls = get_method(method).load()
            attributor = cls(self.model) if layer is None else cls(self.model, layer=layer)
            attributor.attribute(self._example(), target=0)

        self._refuse(f"{where}: method {method}", ("method", method, layer or ""), attempt)

    def method_layer(self, where: str, layer: str | None, methods: Sequence[str]) -> str | None:
        """`layer` for the methods that take one (Grad-CAM's), checked: a spatial layer that runs
        once, and some of `methods` takes it."""
        if layer is None:
            return None
        self.layer(f"{where}: layer", layer, self.spatial)
        if not any(takes_layer(m) for m in methods):
            taking = ", ".join(m for m in METHODS if takes_layer(m))
            raise JobFileError(
                f"{where}: layer applies to the methods that take one ({taking}), and none of "
                f"{', '.join(methods)} does"
            )
        return layer

    def check_methods(self, where: str, methods: Sequence[str], layer: str | None = None) -> None:
        """`check_method` for each method (`layer` for those that take one)."""
        for method in methods:
            self.check_method(where, method, layer if takes_layer(method) else None)

    def check_projection(self, where: str, rule: str, layer: str) -> None:
        """Refuse, naming `where`, a projection of `layer`'s units the run would refuse (a ReLU
        rule on a model with another activation before the layer): one unit is projected."""

        def attempt() -> None:
            shape = self.layers[layer].output_shape
            y, x = (shape[1] // 2, shape[2] // 2) if len(shape) == 3 else (0, 0)
            project_units(self.model, layer, self._example(), [Unit(0, 0, y, x)], rule=Rule(rule))

        self._refuse(f"{where}: projection {rule}", ("projection", rule, layer), attempt)

    def channels(self, where: str, layer: str, choice: int | Sequence[int]) -> tuple[int, ...]:
        """The channels of `layer` a job asks for: `choice` of them spread evenly, or the listed
        ones (duplicates dropped), bounds-checked against the layer."""
        total = self.layers[layer].output_shape[0]
        if isinstance(choice, int):
            if choice >= total:
                return tuple(range(total))
            return tuple(sorted({(i * total) // choice for i in range(choice)}))
        bad = [c for c in choice if c >= total]
        if bad:
            raise JobFileError(
                f"{where}: channel(s) {bad} out of range for layer {layer!r}, which has {total} "
                f"channels (0 to {total - 1})"
            )
        return tuple(dict.fromkeys(choice))

    def channel_table(
        self,
        where: str,
        layers: Sequence[str] | None,
        choice: int | Sequence[int] | Mapping[str, int | Sequence[int]],
        default_layers: Sequence[str],
        default_count: int,
    ) -> dict[str, tuple[int, ...]]:
        """{layer: channels} for an analysis's `layers` and `channels` options.

        `choice` applies to every layer, or is a table per layer (layers it leaves out get
        `default_count` channels; without `layers`, the table's names are the layers). Layers
        default to `default_layers`; each must be spatial (see `layer`).
        """
        if isinstance(choice, Mapping):
            names = tuple(layers) if layers is not None else tuple(choice)
            stray = [name for name in choice if name not in names]
            if stray:
                raise JobFileError(
                    f"{where}: channels names layer(s) {stray} that are not in layers"
                )
        else:
            names = tuple(layers) if layers is not None else tuple(default_layers)
        table = {}
        for name in names:
            self.layer(f"{where}: layers", name)
            wanted = choice.get(name, default_count) if isinstance(choice, Mapping) else choice
            table[name] = self.channels(f"{where}: channels", name, wanted)
        return table

    def image_indices(self, where: str, indices: Sequence[int], most: int) -> tuple[int, ...]:
        """`indices` without repeats, bounds-checked against the job's images; at most `most`
        of them (what one analysis may hold or draw)."""
        indices = tuple(dict.fromkeys(indices))
        if len(indices) > most:
            raise JobFileError(f"{where}: {len(indices)} images; an analysis takes at most {most}")
        bad = [i for i in indices if i >= self.images]
        if bad:
            raise JobFileError(
                f"{where} {bad} out of range; the dataset has {self.images} images "
                f"(0 to {self.images - 1})"
            )
        return tuple(indices)

    def unit_box(self, layer: str, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of unit (y, x)'s receptive field; the whole image for a
        layer without one."""
        field = self.layers[layer].receptive_field
        if field is None:
            height, width = self.entry.input_shape[1:]
            return 0, 0, height, width
        return field.box(y, x)


def _resolve(base: Path, value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _weights_file(entry: Any, weights: str | None, base: Path, source: str) -> Path | None:
    """The file to load: the zoo's shipped file for "default", `model.safetensors` inside a
    folder (a `cnnzoo train --out` model folder), the file itself, or None (random init)."""
    if weights is None:
        return None
    if weights == "default":
        if entry.weights_file is None:
            raise NotFound(
                f"{source}: {entry.name} ships no weights; set weights to a file or "
                '"none" (random init)'
            )
        return entry.weights_file
    path = _resolve(base, weights)
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise NotFound(f"{source}: weights file {path} does not exist")
    return path


def open_world(
    model: str,
    weights: str | None,
    dataset: DatasetSpec,
    base: Path,
    source: str,
    data_dir: str | None = None,
) -> World:
    """Build the model with its weights, open the dataset and trace the layers.

    Args:
        model: the zoo entry, or a run folder (relative to `base`).
        weights: "default" (shipped), a file or model folder (relative to `base`), or None.
        dataset: the dataset table.
        base: the job file's folder.
        source: the job file's name, for messages.
        data_dir: the dataset root (default `$CNNZOO_DATA`, else `./data`).

    Raises:
        NotFound: unknown model, missing weights file.
        InvalidInput: weights that do not fit the model.
        DatasetNotFound: the dataset is missing.
        JobFileError: the dataset (subset) has no images.
    """
    # a run folder (`cnnzoo train` output) resolves against the job file, as weights do
    entry = zoo.get_entry(_resolve(base, model) if "/" in model else model)  # NotFound lists
    weights_file = _weights_file(entry, weights, base, source)
    try:
        network = zoo.build_model(entry, weights=weights_file)
    except CnnzooError as err:
        raise type(err)(f"{source}: weights: {err.reason}") from None
    name = dataset.name if dataset.name in DATASETS else str(_resolve(base, dataset.name))
    images = get_dataset(
        name, dataset.split, data_dir=data_dir, transform=entry.preprocess.torch_transform()
    )  # DatasetNotFound names the folder
    size = len(images) if dataset.subset is None else min(dataset.subset, len(images))
    if size == 0:
        raise JobFileError(f"{source}: dataset {dataset.name} has no images")
    layers = {info.name: info for info in describe_layers(network, tuple(entry.input_shape))}
    return World(
        entry=entry,
        model=network,
        weights_file=weights_file,
        dataset=images,
        images=size,
        layers=layers,
        base=base,
        source=source,
    )
