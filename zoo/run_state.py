"""What a training run keeps between sessions: its settings, its state read back, and how to
continue it.

`train_state.safetensors` (`cnnzoo.zoo.checkpoints.save_train_state`) holds the weights and
optimizer tensors and, as JSON, everything else `ResumedRun` reads back; `RunSettings` are the
choices besides the recipe that fix a run (seed, subsets). A run is continued with
`cnnzoo train runs/NAME --resume` (`resume_command`), and Ctrl-C says so
(`TrainingInterrupted`).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.errors import InvalidInput
from cnnzoo.zoo.checkpoints import load_train_state
from cnnzoo.zoo.datasets import NAMED_DATASETS
from cnnzoo.zoo.recipe import Recipe
from cnnzoo.zoo.registry import get_entry, list_models

if TYPE_CHECKING:
    import torch

__all__ = ["ResumedRun", "RunSettings", "TrainingInterrupted", "resume_command"]


@dataclass(frozen=True)
class RunSettings:
    """What fixes a run beside its recipe: the seed and the subsets (kept in its train state)."""

    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None

    @classmethod
    def resolve(cls, options: Any, saved: RunSettings | None) -> RunSettings:
        """Explicit options, else the resumed run's, else the defaults.

        Raises:
            InvalidInput: --resume with a value the run did not use.
        """
        base = saved or cls()
        chosen = {}
        for key in ("seed", "train_subset", "test_subset"):
            value, used = getattr(options, key), getattr(base, key)
            if saved and value is not None and value != used:
                raise InvalidInput(
                    f"--resume continues the run with its own settings; it used "
                    f"--{key.replace('_', '-')} {used}"
                )
            chosen[key] = used if value is None else value
        return cls(**chosen)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ResumedRun:
    """An unfinished run read back from its `train_state.safetensors`.

    Attributes:
        model_state: the weights after `epoch`.
        optimizer_state: the optimizer's state dict after `epoch`.
        epoch: the last finished epoch.
        recipe: the recipe the run trains with.
        settings: its seed and subsets.
        history: one record per finished epoch.
        wall_time_seconds: training time so far, over all sessions.
        command: the command lines so far, joined by "; ".
        entry_fields: the entry it trains (`ZooEntry.card_fields`).
        dataset_card: the card's `dataset` section without the counts.
        init: what a fine-tuned run started from, or None.
        preset: whether it trains a preset (else an architecture on a dataset).
        chosen: what was chosen for the run from its data (`cnnzoo.zoo.folder_defaults`,
            the learning-rate range test), for its card.
    """

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    epoch: int
    recipe: Recipe
    settings: RunSettings
    history: list[dict[str, Any]]
    wall_time_seconds: float
    command: str
    entry_fields: dict[str, Any]
    dataset_card: dict[str, Any]
    init: dict[str, Any] | None
    preset: bool
    chosen: dict[str, Any]

    @classmethod
    def load(cls, model_dir: Path) -> ResumedRun:
        """The run in `model_dir` (see `cnnzoo.zoo.checkpoints.load_train_state`).

        Raises:
            NotFound: nothing to resume there.
            InvalidInput: a damaged state file.
        """
        model_state, optimizer_state, info = load_train_state(model_dir)
        return cls(
            model_state=model_state,
            optimizer_state=optimizer_state,
            epoch=info["epoch"],
            recipe=Recipe(**info["recipe"]),
            settings=RunSettings(**info["settings"]),
            history=info["history"],
            wall_time_seconds=float(info["wall_time_seconds"]),
            command=info["command"],
            entry_fields=info["entry"],
            dataset_card=info["dataset_card"],
            init=info.get("init"),
            preset=info.get("preset", _was_preset(info, Path(model_dir))),
            chosen=info.get("chosen", {}),
        )

    def options_for(self, options: Any, folder: Path) -> Any:
        """`options` naming the run in `folder` as the command that started it did."""
        fields = self.entry_fields
        if self.preset:
            return replace(options, model=fields["model"], out=folder.parent)
        data = fields["dataset"]
        dataset = data["name"] if data["name"] in NAMED_DATASETS else data["folder"]
        return replace(
            options, model=fields["arch"], dataset=dataset, name=folder.name, out=folder.parent
        )


def _was_preset(info: dict[str, Any], folder: Path) -> bool:
    """Whether a state written before states said so trains a preset (its name, arch, data)."""
    name = info["entry"]["model"]
    if name not in list_models() or folder.name != name:
        return False
    preset = get_entry(name)
    return (preset.arch, preset.dataset) == (info["entry"]["arch"], info["dataset_card"]["name"])


def resume_command(model_dir: Path) -> str:
    """The command that continues the run in `model_dir`."""
    return shlex.join(["cnnzoo", "train", str(model_dir), "--resume"])


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: what is saved and how to continue (`hint`)."""

    def __init__(self, model_dir: Path, epoch: int, epochs_done: int) -> None:
        if epochs_done:
            hint = (
                f"interrupted in epoch {epoch}; epochs 1-{epochs_done} are saved in {model_dir}: "
                f"continue with `{resume_command(model_dir)}`"
            )
        else:
            hint = f"interrupted in epoch {epoch}, before any epoch was saved: start it again"
        super().__init__(hint)
        self.hint = hint
        self.model_dir = model_dir
        self.epochs_done = epochs_done
