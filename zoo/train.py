"""Train a model: deterministic, resumable, one checkpoint per epoch.

Two ways in: a preset (`cnnzoo train lenet5-mnist`: its architecture, dataset and recipe, which
reproduce the shipped card), or an architecture on any data (`cnnzoo train resnet18 --dataset
DIR`: classes, colour mode, input size and normalisation derived from the data by
`cnnzoo.zoo.runs`, optionally fine-tuned from another model's weights, `cnnzoo.zoo.finetune`).

Output, in `<out>/<name>/` (the preset's name, or `--name`, default `ARCH-<dataset>`):
- `epochs/epoch_NNN.safetensors` after every epoch (kept: feature evolution is drawn from them),
- `train_state.safetensors` while the run is unfinished (weights, optimizer state, history;
  the format is `cnnzoo.zoo.checkpoints.save_train_state`'s),
- `model.safetensors` and `card.json` (`cnnzoo.zoo.card.build_card`) when the last epoch is
  done (the state file is removed).

The optimizer and learning-rate schedule come from the entry's recipe (`cnnzoo.zoo.recipe`).

Determinism: every epoch seeds its own RNGs from (seed, epoch): the shuffling order, the
augmentation and dropout of epoch e do not depend on what ran before, so a resumed run equals an
uninterrupted one bit for bit on the same machine and thread count.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnnzoo.errors import AlreadyExists, InvalidInput, NotFound
from cnnzoo.fileio import atomic_write_json
from cnnzoo.zoo.architectures import ARCHITECTURES, get_architecture
from cnnzoo.zoo.augment import AUGMENTATIONS, build_augmentation
from cnnzoo.zoo.card import build_card, hardware_info
from cnnzoo.zoo.checkpoints import (
    STATE_FILE,
    decode_state,
    encode_state,
    epoch_path,
    load_train_state,
    save_train_state,
    save_weights,
)
from cnnzoo.zoo.datasets import NAMED_DATASETS, named_dataset_card
from cnnzoo.zoo.evaluate import evaluate, limit_dataset, torch_threads
from cnnzoo.zoo.finetune import freeze_all_but_head, head_train_mode, load_init
from cnnzoo.zoo.loop import Batch, TrainStep, loader_batches, train_one_epoch
from cnnzoo.zoo.recipe import Recipe, make_optimizer, make_scheduler
from cnnzoo.zoo.registry import ZooEntry, get_entry, list_models
from cnnzoo.zoo.runs import check_run_name, default_run_name, plan_run

__all__ = [
    "ResumedRun",
    "RunSettings",
    "STATE_FILE",
    "TrainOptions",
    "TrainResult",
    "TrainingInterrupted",
    "data_workers",
    "resume_command",
    "train",
]

DEVICES = ("cpu", "cuda")
# Options that only apply to a run of an architecture on other data (`dataset`).
_DATA_OPTIONS = ("name", "input_size", "val_split", "strict", "augment")


@dataclass
class TrainOptions:
    """What `cnnzoo train` was asked to do; None means the recipe's value (or the resumed run's).

    `model` is a preset, or with `dataset` an architecture; `name`, `input_size`, `val_split`,
    `strict` and `augment` shape such a run; `init` (and `freeze`) fine-tune it.

    Raises:
        InvalidInput: a count below 1 (epochs, batch size, stop-after, subsets, threads, input
            size), a learning rate that is not positive, negative workers, an unknown device or
            augmentation, `val_split` outside (0, 1), options that need `dataset` without it,
            `freeze` without `init`.
    """

    model: str
    out: Path = Path("runs")
    dataset: str | None = None
    name: str | None = None
    input_size: int | None = None
    val_split: float | None = None
    strict: bool = False
    init: Path | None = None
    freeze: bool = False
    augment: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    resume: bool = False
    stop_after: int | None = None
    data_dir: Path | None = None
    download: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    threads: int | None = None
    workers: int | None = None
    device: str = "cpu"
    progress: bool = True
    command: str | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.init = None if self.init is None else Path(self.init)
        counts = ("epochs", "batch_size", "stop_after", "train_subset", "test_subset", "threads")
        for key in (*counts, "input_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise InvalidInput(f"--{key.replace('_', '-')} must be >= 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise InvalidInput(f"--lr must be > 0, got {self.lr}")
        if self.workers is not None and self.workers < 0:
            raise InvalidInput(f"--workers must be >= 0, got {self.workers}")
        if self.device not in DEVICES:
            raise InvalidInput(f"device must be cpu or cuda, got {self.device!r}")
        if self.val_split is not None and not 0.0 < self.val_split < 1.0:
            raise InvalidInput(
                f"--val-split must be between 0 and 1 (exclusive), got {self.val_split}"
            )
        if self.dataset is None:
            given = [f"--{k.replace('_', '-')}" for k in _DATA_OPTIONS if getattr(self, k)]
            if given:
                raise InvalidInput(
                    f"{', '.join(given)} shape a run on other data: name an architecture and "
                    "--dataset (a preset has its own data)"
                )
        if self.freeze and self.init is None:
            raise InvalidInput("--freeze trains only the new head of an --init model; add --init")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise InvalidInput(
                f"unknown augmentation {self.augment!r}; known: {', '.join(AUGMENTATIONS)}"
            )
        if self.name is not None:
            check_run_name(self.name)


@dataclass
class TrainResult:
    model: str
    model_dir: Path
    epochs_done: int
    epochs: int
    card: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.epochs

    def summary(self) -> str:
        if not self.finished:
            return (
                f"{self.model}: stopped after epoch {self.epochs_done} of {self.epochs} in "
                f"{self.model_dir}; continue with `{resume_command(self.model_dir)}`"
            )
        assert self.card is not None
        metrics = self.card["metrics"]
        return (
            f"{self.model}: {self.epochs} epochs, test top-1 {100 * metrics['top1']:.2f}% "
            f"top-5 {100 * metrics['top5']:.2f}% ({metrics['n']} images), "
            f"{self.card['wall_time_seconds']:.0f}s; wrote {self.model_dir / 'model.safetensors'} "
            f"and card.json"
        )


@dataclass(frozen=True)
class RunSettings:
    """What fixes a run beside its recipe: the seed and the subsets (kept in its train state)."""

    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None

    @classmethod
    def resolve(cls, options: TrainOptions, saved: RunSettings | None) -> RunSettings:
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
        )

    def options_for(self, options: TrainOptions, folder: Path) -> TrainOptions:
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


def _recipe_for(entry: ZooEntry, options: TrainOptions, resumed: ResumedRun | None) -> Recipe:
    recipe = resumed.recipe if resumed else entry.recipe
    overrides = {
        k: v
        for k, v in {
            "epochs": options.epochs,
            "batch_size": options.batch_size,
            "lr": options.lr,
        }.items()
        if v is not None
    }
    if resumed:
        changed = {k: v for k, v in overrides.items() if getattr(recipe, k) != v}
        if changed:
            raise InvalidInput(
                "--resume continues the run with its own settings; it used "
                + ", ".join(f"--{k.replace('_', '-')} {getattr(recipe, k)}" for k in changed)
            )
    return replace(recipe, **overrides)


@dataclass
class _Plan:
    """What one run trains: the entry, its splits and the card's dataset section."""

    entry: ZooEntry
    train_set: Any
    test_set: Any
    dataset_card: dict[str, Any]


def train(options: TrainOptions) -> TrainResult:
    """Train (or resume) a preset, or an architecture on other data; see the module docstring.

    Raises:
        NotFound: unknown model or architecture, --init file missing, or --resume with
            nothing to resume.
        AlreadyExists: the output folder already holds a run (and --resume is not set).
        DatasetNotFound: the dataset is missing.
        InvalidInput: a bad option, bad data, or CUDA asked for where there is none.
    """
    if options.out.exists() and not options.out.is_dir():
        raise InvalidInput(f"--out {options.out} is a file, not a folder")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device cuda requested but no CUDA device is available")
    if options.init is not None and not options.init.is_file():
        raise NotFound(f"--init {options.init} does not exist")
    resumed = None
    if options.resume and _is_run_folder(options.model):  # cnnzoo train runs/NAME --resume
        folder = Path(options.model)
        resumed = ResumedRun.load(folder)
        options = resumed.options_for(options, folder)
    if options.dataset is None:
        run_name = _preset(options.model).name
    else:
        run_name = options.name or default_run_name(options.model, options.dataset)
    model_dir = options.out / run_name
    if options.resume:
        resumed = resumed or ResumedRun.load(model_dir)
    elif model_dir.exists() and any(model_dir.iterdir()):
        raise AlreadyExists(
            f"{model_dir} already holds a training run; continue it with --resume or choose "
            f"another --out"
        )
    plan = _plan(options, resumed)
    recipe = _recipe_for(plan.entry, options, resumed)
    settings = RunSettings.resolve(options, resumed.settings if resumed else None)
    augment = build_augmentation(recipe.augment, plan.entry.preprocess.input_size)
    plan.train_set.transform = plan.entry.preprocess.torch_transform(augment)
    plan.test_set.transform = plan.entry.preprocess.torch_transform()
    plan.train_set = limit_dataset(plan.train_set, settings.train_subset, settings.seed)
    plan.test_set = limit_dataset(plan.test_set, settings.test_subset)
    with torch_threads(options.threads), _deterministic(options.device):
        run = _start(plan, options, recipe, settings, model_dir, resumed)
        epoch = run.start_epoch
        try:
            for epoch in range(run.start_epoch + 1, recipe.epochs + 1):
                run.metrics = _train_epoch(run, epoch)
                stop = options.stop_after
                if stop is not None and epoch - run.start_epoch >= stop and epoch < recipe.epochs:
                    return TrainResult(run.entry.name, model_dir, epoch, recipe.epochs)
        except KeyboardInterrupt:
            saved = len(run.history) if (model_dir / STATE_FILE).is_file() else 0
            raise TrainingInterrupted(model_dir, epoch, saved) from None
        return _finish(run)


def _is_run_folder(model: str) -> bool:
    """Whether `model` names a run folder rather than a preset or an architecture."""
    if model in ARCHITECTURES or model in list_models():
        return False
    return "/" in model or os.sep in model or Path(model).is_dir()


def _preset(name: str) -> ZooEntry:
    """The preset `cnnzoo train NAME` (without --dataset) trains."""
    if name in ARCHITECTURES:
        raise InvalidInput(
            f"{name} is an architecture: name the data with --dataset (one of "
            f"{', '.join(NAMED_DATASETS[:-1])} or an image folder)"
        )
    if _is_run_folder(name):
        raise InvalidInput(
            f"{name} is a run folder: continue it with `{resume_command(Path(name))}`, or "
            f"fine-tune from it with --init {Path(name) / 'model.safetensors'}"
        )
    if name not in list_models():
        raise NotFound(
            f"unknown model {name!r}; known models: {', '.join(list_models())}; architectures "
            f"(with --dataset): {', '.join(ARCHITECTURES)}"
        )
    return get_entry(name)


def _plan(options: TrainOptions, resumed: ResumedRun | None) -> _Plan:
    """The entry and splits of this run: a preset's, the resumed run's, or derived from data."""
    opened = {"data_dir": options.data_dir, "download": options.download, "offer_download": True}
    if options.dataset is None:
        entry = _preset(options.model)
        card = named_dataset_card(entry.dataset, options.data_dir)
        train_set = entry.open_dataset("train", **opened)
        return _Plan(entry, train_set, entry.open_dataset("test", **opened), card)
    if resumed is not None:  # the entry the run derived when it started
        entry = ZooEntry.from_card(resumed.entry_fields, None, where=f"{STATE_FILE} of the run")
        strict = {"strict": options.strict}
        return _Plan(
            entry,
            entry.open_dataset("train", **opened, **strict),
            entry.open_dataset("test", **opened, **strict),
            resumed.dataset_card,
        )
    arch = get_architecture(options.model) if options.model not in list_models() else None
    recipe = None
    if arch is not None and options.augment is not None:
        recipe = replace(arch.recipe, augment=options.augment)
    data = plan_run(
        options.model,
        options.dataset,
        name=options.name,
        recipe=recipe,
        input_size=options.input_size,
        val_split=options.val_split,
        seed=options.seed or 0,
        strict=options.strict,
        data_dir=options.data_dir,
        download=options.download,
    )
    return _Plan(data.entry, data.train_set, data.test_set, data.card)


@dataclass
class _Run:
    """A training session under way: what `_train_epoch` and `_finish` share."""

    plan: _Plan
    options: TrainOptions
    recipe: Recipe
    settings: RunSettings
    model_dir: Path
    model: nn.Module
    step: TrainStep
    test_loader: DataLoader
    workers: int
    start_epoch: int
    init: dict[str, Any] | None
    history: list[dict[str, Any]]
    wall: float
    commands: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def entry(self) -> ZooEntry:
        return self.plan.entry


def _start(
    plan: _Plan,
    options: TrainOptions,
    recipe: Recipe,
    settings: RunSettings,
    model_dir: Path,
    resumed: ResumedRun | None,
) -> _Run:
    """Build the model (seeded), load a resumed or initial state, the optimizer and schedule."""
    entry, device = plan.entry, options.device
    workers = data_workers(options)
    torch.manual_seed(settings.seed)
    model = entry.build()
    init = resumed.init if resumed else None
    if resumed:
        model.load_state_dict(resumed.model_state)
    elif options.init is not None:
        init = load_init(model, options.init, entry.spec, freeze=options.freeze)
    frozen = bool(init and init["frozen"])
    if frozen:
        freeze_all_but_head(model, entry.spec)
    model.to(device)
    if device == "cuda":  # NHWC convolutions are cuDNN's fast path (CPU runs keep NCHW)
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    if resumed:
        optimizer.load_state_dict(resumed.optimizer_state)
    steps_per_epoch = math.ceil(len(plan.train_set) / recipe.batch_size)
    start_epoch = resumed.epoch if resumed else 0
    scheduler = make_scheduler(
        optimizer, recipe, steps_per_epoch * recipe.epochs, start_epoch * steps_per_epoch
    )
    spec = entry.spec
    step = TrainStep(
        model, optimizer, scheduler, recipe.label_smoothing,
        train_mode=(lambda m: head_train_mode(m, spec)) if frozen else nn.Module.train,
    )  # fmt: skip
    command = options.command or _command_for(options)
    commands = f"{resumed.command}; {command}" if resumed and resumed.command else command
    test_loader = DataLoader(
        plan.test_set, batch_size=256, shuffle=False, num_workers=workers,
        pin_memory=device == "cuda",
    )  # fmt: skip
    return _Run(
        plan, options, recipe, settings, model_dir, model, step, test_loader, workers,
        start_epoch, init,
        history=resumed.history if resumed else [],
        wall=resumed.wall_time_seconds if resumed else 0.0,
        commands=commands,
    )  # fmt: skip


def _epoch_batches(run: _Run, generator: torch.Generator) -> Iterable[Batch]:
    """The training batches of one epoch, shuffled by `generator`.

    The hook for another data path: a source holding the training split on the device (with
    its own augmentation there) returns its batches here instead of a DataLoader's.
    """
    return loader_batches(
        run.plan.train_set,
        batch_size=run.recipe.batch_size,
        generator=generator,
        workers=run.workers,
        pin=run.options.device == "cuda",
    )


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Train epoch `epoch`, evaluate, record and checkpoint it; its test metrics."""
    entry, recipe, device = run.entry, run.recipe, run.options.device
    started = time.perf_counter()
    epoch_seed = run.settings.seed * 100_003 + epoch
    torch.manual_seed(epoch_seed)  # augmentation and dropout of this epoch
    batches = _epoch_batches(run, torch.Generator().manual_seed(epoch_seed))
    run.step.train_mode(run.model)
    stats = train_one_epoch(
        run.step,
        batches,
        device=device,
        description=f"{entry.name} epoch {epoch}/{recipe.epochs}",
        progress=run.options.progress,
    )
    metrics = evaluate(run.model, run.test_loader, entry.labels, device=device)
    seconds = time.perf_counter() - started
    run.wall += seconds
    run.history.append(
        {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_top1": stats.top1,
            "test_top1": metrics["top1"],
            "test_loss": metrics["loss"],
            "lr": run.step.lr,
            "seconds": round(seconds, 2),
        }
    )
    tqdm.write(
        f"{entry.name} epoch {epoch}/{recipe.epochs}: train loss {stats.loss:.4f} "
        f"acc {stats.top1:.4f}, test top-1 {metrics['top1']:.4f} ({seconds:.0f}s)",
        file=sys.stderr,
    )
    meta = {"zoo_entry": entry.name, "epoch": str(epoch), "seed": str(run.settings.seed)}
    save_weights(run.model, epoch_path(run.model_dir, epoch), meta, entry.weights_dtype)
    save_train_state(run.model_dir, run.model, run.step.optimizer, _state_info(run, epoch))
    return metrics


def _state_info(run: _Run, epoch: int) -> dict[str, Any]:
    """What `ResumedRun.load` reads back, after `epoch`."""
    return {
        "epoch": epoch,
        "recipe": run.recipe.to_dict(),
        "settings": run.settings.to_dict(),
        "history": run.history,
        "wall_time_seconds": run.wall,
        "command": run.commands,
        "entry": run.entry.card_fields(),
        "dataset_card": run.plan.dataset_card,
        "init": run.init,
        "preset": run.options.dataset is None,
    }


def _finish(run: _Run) -> TrainResult:
    """Write the final weights and the card; the state file goes."""
    entry, model, settings = run.entry, run.model, run.settings
    metrics = run.metrics
    if entry.weights_dtype != "float32":  # the card measures the weights as they are stored
        model.load_state_dict(decode_state(encode_state(model.state_dict(), entry.weights_dtype)))
        metrics = {}
    if not metrics:  # resumed a finished run, or rounded weights: measure the final weights
        metrics = evaluate(model, run.test_loader, entry.labels, device=run.options.device)
    weights = run.model_dir / "model.safetensors"
    epochs = run.recipe.epochs
    meta = {"zoo_entry": entry.name, "epochs": str(epochs), "seed": str(settings.seed)}
    save_weights(model, weights, meta, entry.weights_dtype)
    card = build_card(
        {**entry.card_fields(), "recipe": run.recipe.to_dict()},
        model=model,
        weights=weights,
        seed=settings.seed,
        dataset={
            **run.plan.dataset_card,
            "n_train": len(run.plan.train_set),
            "n_test": len(run.plan.test_set),
            "train_subset": settings.train_subset,
            "test_subset": settings.test_subset,
        },
        metrics=metrics,
        history=run.history,
        wall_time_seconds=run.wall,
        hardware={**hardware_info(run.options.device), "data_workers": run.workers},
        command=run.commands,
        init=run.init,
    )
    atomic_write_json(run.model_dir / "card.json", card)
    (run.model_dir / STATE_FILE).unlink(missing_ok=True)
    return TrainResult(entry.name, run.model_dir, epochs, epochs, card)


def _command_for(options: TrainOptions) -> str:
    """A `cnnzoo train` line equivalent to `options` (when called from Python, not the CLI)."""
    parts = ["cnnzoo", "train", options.model, "--out", str(options.out)]
    for flag, value in (
        ("--dataset", options.dataset),
        ("--name", options.name),
        ("--input-size", options.input_size),
        ("--val-split", options.val_split),
        ("--augment", options.augment),
        ("--init", options.init),
        ("--epochs", options.epochs),
        ("--batch-size", options.batch_size),
        ("--lr", options.lr),
        ("--seed", options.seed),
        ("--train-subset", options.train_subset),
        ("--test-subset", options.test_subset),
        ("--stop-after", options.stop_after),
    ):
        if value is not None:
            parts += [flag, str(value)]
    for flag, on in (("--strict", options.strict), ("--freeze", options.freeze)):
        if on:
            parts.append(flag)
    if options.resume:
        parts.append("--resume")
    return shlex.join(parts)


class _deterministic:  # noqa: N801 - used like a function
    """Deterministic kernels for the duration of a run; the previous setting is restored.

    On CUDA, cuBLAS needs a fixed workspace to be deterministic, and an op without a
    deterministic kernel warns instead of ending a long run.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def __enter__(self) -> None:
        self.previous = torch.are_deterministic_algorithms_enabled()
        self.previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        self.previous_benchmark = torch.backends.cudnn.benchmark
        cuda = self.device == "cuda"
        if cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False  # autotuning may pick another kernel per run
        torch.use_deterministic_algorithms(True, warn_only=cuda)

    def __exit__(self, *exc: object) -> None:
        torch.use_deterministic_algorithms(self.previous, warn_only=self.previous_warn)
        torch.backends.cudnn.benchmark = self.previous_benchmark


def data_workers(options: TrainOptions) -> int:
    """DataLoader worker processes: the option, else 0 on CPU (the cores compute) and up to 8
    on CUDA (the GPU waits on decoding and augmentation otherwise)."""
    if options.workers is not None:
        return options.workers
    return min(8, os.cpu_count() or 1) if options.device == "cuda" else 0
