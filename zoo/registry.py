"""The zoo's registry: which models exist, what they are bound to, and how to build them.

An entry is an architecture (`cnnzoo.zoo.architectures`) bound to a dataset: labels,
preprocessing, training recipe, weights. The presets in `cnnzoo.zoo.catalogue` are registered
by name; a run folder that `cnnzoo train` wrote (`model.safetensors` + `card.json`) is an entry
too, read from its card, so `get_entry("runs/NAME")` and `build_model("runs/NAME")` work
wherever a model name is taken. Entries are plain data, so listing the zoo (`cnnzoo list`,
`cnnzoo --help`) never imports torch; `build_model` imports it when needed.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.errors import AlreadyExists, InvalidInput, NotFound
from cnnzoo.zoo.architectures import Architecture, get_architecture
from cnnzoo.zoo.card import validate_card
from cnnzoo.zoo.checkpoints import STATE_FILE, WEIGHT_DTYPES, load_weights_file
from cnnzoo.zoo.datasets import NAMED_DATASETS, get_dataset
from cnnzoo.zoo.preprocess import Preprocess
from cnnzoo.zoo.pretrained import is_pretrained_spec, pretrained_weights
from cnnzoo.zoo.recipe import Recipe

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "CARD_FILE",
    "WEIGHTS_FILE",
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
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo: an architecture bound to a dataset.

    Attributes:
        name: registry name, e.g. "lenet5-mnist", or a run's name.
        arch: the architecture's name in `cnnzoo.zoo.architectures`, e.g. "lenet5".
        dataset: a named dataset ("mnist", "cifar10", ...) or the path of an image folder.
        labels: class names in class-index order.
        preprocess: how an image becomes the model input.
        recipe: training defaults.
        weights_dir: folder with `model.safetensors`, `card.json` and
            `epochs/epoch_NNN.safetensors`, or None when there are no weights.
        architecture: a short human description (default: the architecture's).
        paper: link to the paper the architecture comes from (default: the architecture's).
        notes: what a model card should say about deviations from the paper.
        weights_dtype: how training stores floating-point weights: "float32", or "float16" /
            "int8" to shrink a large model's files (see `cnnzoo.zoo.checkpoints.encode_state`); the
            card measures the weights as stored.
        val_split: for an image folder of class folders only: the fraction held out (seeded,
            stratified) as the test split.
        split_seed: the seed of that split.

    Raises:
        ValueError: the entry contradicts itself (unknown architecture or weights dtype, fewer
            than two labels, an input the architecture cannot take).
    """

    name: str
    arch: str
    dataset: str
    labels: tuple[str, ...]
    preprocess: Preprocess
    recipe: Recipe
    weights_dir: Path | None
    architecture: str = ""
    paper: str = ""
    notes: str = ""
    weights_dtype: str = "float32"
    val_split: float | None = None
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.weights_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"{self.name}: weights_dtype must be one of {WEIGHT_DTYPES}")
        try:
            spec = get_architecture(self.arch)
            spec.check_input_size(self.preprocess.input_size[0])
        except (NotFound, InvalidInput) as err:
            raise ValueError(f"{self.name}: {err.reason}") from None
        if self.preprocess.channels not in spec.channels:
            raise ValueError(f"{self.name}: {self.arch} takes {spec.channels}-channel input")
        if len(self.labels) < 2:
            raise ValueError(f"{self.name}: a classifier needs at least two labels")
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "architecture", self.architecture or spec.description)
        object.__setattr__(self, "paper", self.paper or spec.paper)

    @property
    def spec(self) -> Architecture:
        """The architecture."""
        return get_architecture(self.arch)

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one model input."""
        return (self.preprocess.channels, *self.preprocess.input_size)

    @property
    def torchvision_state_dicts(self) -> bool:
        """Whether torchvision `.pth` state dicts load as weights files."""
        return self.spec.torchvision

    @property
    def weights_file(self) -> Path | None:
        """The entry's `model.safetensors`, or None."""
        return None if self.weights_dir is None else self.weights_dir / WEIGHTS_FILE

    def card(self) -> dict[str, Any] | None:
        """The model card (card.json) as a dict, or None when there is none."""
        if self.weights_dir is None or not (self.weights_dir / CARD_FILE).is_file():
            return None
        card: dict[str, Any] = json.loads(
            (self.weights_dir / CARD_FILE).read_text(encoding="utf-8")
        )
        return card

    def build(self) -> nn.Module:
        """The randomly initialised network for this entry's classes and channels (imports
        torch)."""
        return self.spec.build(self.num_classes, self.preprocess.channels)

    @classmethod
    def from_run(cls, folder: Path) -> ZooEntry:
        """The entry a run folder's card describes (its weights are the folder's).

        Raises:
            NotFound: the folder, its card.json or its model.safetensors is missing.
            InvalidInput: the card is not a readable model card.
        """
        if not folder.is_dir():
            raise NotFound(f"no run folder {folder}")
        card_path = folder / CARD_FILE
        if not (folder / WEIGHTS_FILE).is_file() or not card_path.is_file():
            missing = [n for n in (WEIGHTS_FILE, CARD_FILE) if not (folder / n).is_file()]
            hint = (
                "an unfinished run: continue it with `cnnzoo train ... --resume`"
                if (folder / STATE_FILE).is_file()
                else "a `cnnzoo train` run folder holds model.safetensors and card.json"
            )
            raise NotFound(f"{folder} has no {' or '.join(missing)} ({hint})")
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidInput(f"{card_path} is not valid JSON: {err}") from None
        problems = validate_card(card) if isinstance(card, dict) else ["not a JSON object"]
        if problems:
            raise InvalidInput(f"{card_path} is not a cnnzoo model card: {'; '.join(problems)}")
        return cls.from_card(card, folder, where=str(card_path))

    @classmethod
    def from_card(cls, card: dict[str, Any], folder: Path | None, where: str = "") -> ZooEntry:
        """The entry a card's fields describe (`model`, `arch`, `labels`, `preprocess`,
        `recipe`, `dataset`, `architecture`, `paper`, `notes`), weights in `folder`.

        Raises:
            InvalidInput: the fields do not describe a model (names `where`).
        """
        where = where or "the model card"
        data = card["dataset"]
        preset = _ENTRIES.get(card["model"])  # a run of a preset (cards before `arch` existed)
        arch = card.get("arch") or (preset.arch if preset else "")
        if not arch:
            raise InvalidInput(f"{where} names no architecture (its `arch` key)")
        try:
            return cls(
                name=card["model"],
                arch=arch,
                dataset=data["name"] if data["name"] in NAMED_DATASETS else data["folder"],
                labels=tuple(card["labels"]),
                preprocess=Preprocess(
                    **{
                        **card["preprocess"],
                        "mean": tuple(card["preprocess"]["mean"]),
                        "std": tuple(card["preprocess"]["std"]),
                    }
                ),
                recipe=Recipe(**card["recipe"]),
                weights_dir=folder,
                architecture=card["architecture"],
                paper=card["paper"],
                notes=card["notes"],
                weights_dtype=preset.weights_dtype if preset else "float32",
                val_split=data.get("val_split"),
                split_seed=data.get("split_seed", 0),
            )
        except (KeyError, TypeError, ValueError, InvalidInput) as err:
            reason = getattr(err, "reason", str(err))
            raise InvalidInput(f"{where} does not describe a model: {reason}") from None

    def card_fields(self) -> dict[str, Any]:
        """The card fields `from_card` reads back (a resumed run keeps its entry in them)."""
        return {
            "model": self.name,
            "arch": self.arch,
            "family": self.family,
            "input_shape": list(self.input_shape),
            "labels": list(self.labels),
            "preprocess": asdict(self.preprocess),
            "recipe": self.recipe.to_dict(),
            "dataset": {
                "name": self.dataset if self.dataset in NAMED_DATASETS else Path(self.dataset).name,
                "folder": self.dataset,
                "val_split": self.val_split,
                "split_seed": self.split_seed,
            },
            "architecture": self.architecture,
            "paper": self.paper,
            "notes": self.notes,
        }

    def open_dataset(
        self,
        split: str,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        transform: Any = None,
        download: bool = False,
        offer_download: bool = False,
        strict: bool = False,
    ) -> Any:
        """One split of the entry's own dataset (a held-out split is drawn again with the
        entry's seed), with its preprocessing unless `transform` says otherwise."""
        return get_dataset(
            self.dataset,
            split,
            data_dir=data_dir,
            transform=transform if transform is not None else self.preprocess.torch_transform(),
            download=download,
            offer_download=offer_download,
            val_split=self.val_split,
            seed=self.split_seed,
            strict=strict,
        )


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


def get_entry(name: str | os.PathLike[str]) -> ZooEntry:
    """The entry called `name`, or the run folder at that path.

    A registered name wins; anything else that is a path (it contains a separator, or names
    an existing folder) is read as a run folder (see `ZooEntry.from_run`).

    Raises:
        NotFound: an unknown name (the known ones are listed), or a run folder without its
            weights or card.
        InvalidInput: a run folder whose card does not describe a model.
    """
    key = os.fspath(name) if isinstance(name, (str, os.PathLike)) else name
    if isinstance(key, str) and key in _ENTRIES:
        return _ENTRIES[key]
    if isinstance(key, str) and key and ("/" in key or os.sep in key or Path(key).is_dir()):
        return ZooEntry.from_run(Path(key))
    raise NotFound(
        f"unknown model {key!r}; known models: {', '.join(list_models())} "
        "(or the path of a run folder that `cnnzoo train` wrote)"
    )


def build_model(
    name: str | os.PathLike[str] | ZooEntry, *, weights: str | os.PathLike[str] | None = None
) -> nn.Module:
    """Build the zoo model `name` (a registered entry or a run folder), in eval mode.

    Args:
        name: a registered entry (see `list_models()`), a run folder, or an entry.
        weights: None for random initialisation, "default" for the entry's own weights (the
            shipped ones, or a run folder's model.safetensors), a path to a `.safetensors`
            state dict (a torchvision `.pth` state dict is accepted for the torchvision
            architectures), or torchvision's weights by name ("torchvision[:TAG]", fetched
            and checked by `cnnzoo.zoo.pretrained`; their preprocessing is theirs).

    Raises:
        NotFound: unknown model, no shipped weights, or a missing weights file.
        InvalidInput: a corrupt weights file or one made for another architecture.
        Unavailable, IntegrityError: torchvision's weights cannot be fetched or are damaged.
    """
    entry = name if isinstance(name, ZooEntry) else get_entry(name)
    model = entry.build()
    if weights is not None:
        if isinstance(weights, str) and weights == "default":
            if entry.weights_file is None:
                raise NotFound(
                    f"{entry.name} has no shipped weights; train it with "
                    f"`cnnzoo train {entry.name}` or pass a weights file"
                )
            weights = entry.weights_file
        elif is_pretrained_spec(weights):
            weights = pretrained_weights(entry.spec, str(weights)).fetch()
        load_weights_file(
            model, Path(weights), entry.name, accept_pth=entry.torchvision_state_dicts
        )
    return model.eval()
