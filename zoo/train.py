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

import os
import shlex
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnnzoo.errors import AlreadyExists, InvalidInput, NotFound
from cnnzoo.zoo.architectures import ARCHITECTURES, Architecture, get_architecture
from cnnzoo.zoo.augment import AUGMENTATIONS, build_augmentation
from cnnzoo.zoo.checkpoints import STATE_FILE, epoch_path, save_train_state, save_weights
from cnnzoo.zoo.cuda_training import prepare_cuda_model
from cnnzoo.zoo.datasets import NAMED_DATASETS, named_dataset_card
from cnnzoo.zoo.device_data import DeviceData
from cnnzoo.zoo.evaluate import evaluate, limit_dataset, torch_threads
from cnnzoo.zoo.finetune import freeze_all_but_head, head_train_mode, load_init
from cnnzoo.zoo.folder_defaults import folder_defaults
from cnnzoo.zoo.loop import Batch, TrainStep, loader_batches, steps_per_epoch, train_one_epoch
from cnnzoo.zoo.lr_range import lr_range_test
from cnnzoo.zoo.pretrained import PretrainedWeights, is_pretrained_spec, pretrained_weights
from cnnzoo.zoo.recipe import Recipe, make_optimizer, make_scheduler
from cnnzoo.zoo.registry import ZooEntry, get_entry, list_models
from cnnzoo.zoo.run_state import ResumedRun, RunSettings, TrainingInterrupted, resume_command
from cnnzoo.zoo.runs import check_run_name, default_run_name, plan_run
from cnnzoo.zoo.training_run import TrainingRun, TrainResult, finish_run

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

    `model` is a preset, with `dataset` an architecture, or with `resume` a run folder; `name`,
    `input_size`, `val_split`, `strict` and `augment` shape a run on other data; `init` (a
    weights file, `"torchvision[:TAG]"` or a `PretrainedWeights`), `freeze` and
    `backbone_lr_scale` fine-tune it. `lr` is a rate or "auto" (a range test picks it: the
    default for image folders, `cnnzoo.zoo.folder_defaults`).

    Raises:
        InvalidInput: a count below 1 (epochs, batch size, stop-after, subsets, threads, input
            size), a learning rate that is not positive or "auto", negative workers, an
            unknown device or augmentation, `val_split` outside (0, 1), a backbone scale
            outside (0, 1], options that need `dataset` without it, `freeze` without `init`,
            `freeze` with `backbone_lr_scale`.
    """

    model: str
    out: Path = Path("runs")
    dataset: str | None = None
    name: str | None = None
    input_size: int | None = None
    val_split: float | None = None
    strict: bool = False
    init: Path | str | PretrainedWeights | None = None
    freeze: bool = False
    backbone_lr_scale: float | None = None
    augment: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | str | None = None
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
        if self.init is not None and not isinstance(self.init, PretrainedWeights):
            self.init = self.init if is_pretrained_spec(self.init) else Path(self.init)
        counts = ("epochs", "batch_size", "stop_after", "train_subset", "test_subset", "threads")
        for key in (*counts, "input_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise InvalidInput(f"--{key.replace('_', '-')} must be >= 1, got {value}")
        if self.lr is not None and self.lr != "auto":
            if isinstance(self.lr, str) or not self.lr > 0:
                raise InvalidInput(f"--lr must be > 0 or auto, got {self.lr}")
            self.lr = float(self.lr)
        scale = self.backbone_lr_scale
        if scale is not None and not 0.0 < scale <= 1.0:
            raise InvalidInput(f"--backbone-lr-scale must be in (0, 1], got {scale}")
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
        if self.freeze and scale is not None:
            raise InvalidInput(
                "--backbone-lr-scale sets the rate of the layers --freeze keeps fixed; use one"
            )
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise InvalidInput(
                f"unknown augmentation {self.augment!r}; known: {', '.join(AUGMENTATIONS)}"
            )
        if self.name is not None:
            check_run_name(self.name)


def _recipe_for(plan: _Plan, options: TrainOptions, resumed: ResumedRun | None) -> Recipe:
    """The entry's recipe (the resumed run's) with the options given; refuses a resume that
    would change it."""
    recipe = resumed.recipe if resumed else plan.entry.recipe
    overrides = {
        k: v
        for k, v in {
            "epochs": options.epochs,
            "batch_size": options.batch_size,
            "lr": options.lr if options.lr != "auto" else None,
            "backbone_lr_scale": options.backbone_lr_scale,
        }.items()
        if v is not None
    }
    if resumed:
        changed = {k: v for k, v in overrides.items() if getattr(recipe, k) != v}
        if options.lr == "auto" and "lr" not in resumed.chosen:
            changed["lr"] = "auto"
        if changed:
            raise InvalidInput(
                "--resume continues the run with its own settings; it used "
                + ", ".join(f"--{k.replace('_', '-')} {getattr(recipe, k)}" for k in changed)
            )
    return replace(recipe, **overrides)


@dataclass
class _Plan:
    """What one run trains: the entry, its splits, the card's dataset section, where its
    weights start, and what was chosen for it from the data."""

    entry: ZooEntry
    train_set: Any
    test_set: Any
    dataset_card: dict[str, Any]
    init: Path | PretrainedWeights | None = None
    lr_auto: bool = False
    chosen: dict[str, Any] = field(default_factory=dict)


def train(options: TrainOptions) -> TrainResult:
    """Train (or resume) a preset, or an architecture on other data; see the module docstring.

    Raises:
        NotFound: unknown model or architecture, --init file missing, or --resume with
            nothing to resume.
        AlreadyExists: the output folder already holds a run (and --resume is not set).
        DatasetNotFound: the dataset is missing.
        Unavailable: torchvision's weights are not cached and cannot be downloaded.
        InvalidInput: a bad option, bad data, or CUDA asked for where there is none.
    """
    if options.out.exists() and not options.out.is_dir():
        raise InvalidInput(f"--out {options.out} is a file, not a folder")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device cuda requested but no CUDA device is available")
    if isinstance(options.init, Path) and not options.init.is_file():
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
    recipe = _recipe_for(plan, options, resumed)
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
            if plan.lr_auto and resumed is None:
                _pick_lr(run)
            for epoch in range(run.start_epoch + 1, run.recipe.epochs + 1):
                run.metrics = _train_epoch(run, epoch)
                stop, last = options.stop_after, run.recipe.epochs
                if stop is not None and epoch - run.start_epoch >= stop and epoch < last:
                    return TrainResult(run.entry.name, model_dir, epoch, last)
        except KeyboardInterrupt:
            saved = len(run.history) if (model_dir / STATE_FILE).is_file() else 0
            raise TrainingInterrupted(model_dir, epoch, saved) from None
        return finish_run(run)


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


def _init_source(options: TrainOptions, arch: Architecture) -> Path | PretrainedWeights | None:
    """Where `--init` points: a file, or torchvision's weights resolved for `arch`."""
    if isinstance(options.init, str):
        return pretrained_weights(arch, options.init)
    return options.init


def _plan(options: TrainOptions, resumed: ResumedRun | None) -> _Plan:
    """The entry and splits of this run: a preset's, the resumed run's, or derived from data."""
    opened = {"data_dir": options.data_dir, "download": options.download, "offer_download": True}
    lr_auto = options.lr == "auto"
    if resumed is not None and not resumed.preset:  # the entry the run derived when it started
        entry = ZooEntry.from_card(resumed.entry_fields, None, where=f"{STATE_FILE} of the run")
        strict = {"strict": options.strict}
        return _Plan(
            entry,
            entry.open_dataset("train", **opened, **strict),
            entry.open_dataset("test", **opened, **strict),
            resumed.dataset_card,
            chosen=resumed.chosen,
        )
    if options.dataset is None:
        entry = _preset(options.model)
        card = named_dataset_card(entry.dataset, options.data_dir)
        train_set = entry.open_dataset("train", **opened)
        test_set = entry.open_dataset("test", **opened)
        init = None if resumed else _init_source(options, entry.spec)
        chosen = resumed.chosen if resumed else {}
        return _Plan(entry, train_set, test_set, card, init, lr_auto, chosen)
    arch = get_architecture(options.model) if options.model not in list_models() else None
    init = _init_source(options, arch) if arch is not None else None
    data = plan_run(
        options.model,
        options.dataset,
        name=options.name,
        input_size=options.input_size,
        val_split=options.val_split,
        seed=options.seed or 0,
        strict=options.strict,
        data_dir=options.data_dir,
        download=options.download,
        pretrained=init.preprocess if isinstance(init, PretrainedWeights) else None,
    )
    assert arch is not None  # plan_run refused a preset
    if options.dataset in NAMED_DATASETS:  # the architecture's recipe, as the flags change it
        recipe = replace(arch.recipe, augment=options.augment or arch.recipe.augment)
        entry = replace(data.entry, recipe=recipe)
        return _Plan(entry, data.train_set, data.test_set, data.card, init, lr_auto)
    n_train = len(data.train_set)
    defaults = folder_defaults(
        arch,
        colour=data.colour,
        n_train=min(n_train, options.train_subset or n_train),
        pretrained=init is not None,
        freeze=options.freeze,
        augment=options.augment,
        epochs=options.epochs,
        batch_size=options.batch_size,
        lr=options.lr,
        backbone_lr_scale=options.backbone_lr_scale,
    )
    entry = replace(data.entry, recipe=defaults.recipe)
    return _Plan(
        entry, data.train_set, data.test_set, data.card, init, defaults.lr_auto, defaults.chosen
    )


def _start(
    plan: _Plan,
    options: TrainOptions,
    recipe: Recipe,
    settings: RunSettings,
    model_dir: Path,
    resumed: ResumedRun | None,
) -> TrainingRun:
    """Build the model (seeded), load a resumed or initial state, the optimizer and schedule."""
    entry, device = plan.entry, options.device
    torch.manual_seed(settings.seed)
    model = entry.build()
    init = resumed.init if resumed else None
    if resumed:
        model.load_state_dict(resumed.model_state)
    elif plan.init is not None:
        init = load_init(model, plan.init, entry.spec, freeze=options.freeze,
                         progress=options.progress)  # fmt: skip
    frozen = bool(init and init["frozen"])
    if frozen:
        freeze_all_but_head(model, entry.spec)
    model.to(device)
    if device == "cuda":  # layout, bf16, compilation: cnnzoo.zoo.cuda_training
        prepare_cuda_model(model)
    spec = entry.spec
    step = TrainStep(
        model, *_optimizer_and_schedule(model, recipe, entry, len(plan.train_set), resumed),
        recipe.label_smoothing,
        train_mode=(lambda m: head_train_mode(m, spec)) if frozen else nn.Module.train,
    )  # fmt: skip
    command = options.command or _command_for(options)
    commands = f"{resumed.command}; {command}" if resumed and resumed.command else command
    # MNIST/CIFAR-10 on CUDA: both splits on the GPU, augmented there (cnnzoo.zoo.device_data)
    on_device = DeviceData.for_run(
        plan.train_set, plan.test_set, entry.preprocess, recipe.augment, device
    )
    workers = 0 if on_device else data_workers(options)
    test_loader = DataLoader(
        plan.test_set, batch_size=256, shuffle=False, num_workers=workers,
        pin_memory=device == "cuda",
    )  # fmt: skip
    return TrainingRun(
        plan.entry, plan.train_set, plan.dataset_card, options, recipe, settings, model_dir,
        model, step, test_loader, workers, resumed.epoch if resumed else 0, init,
        history=resumed.history if resumed else [],
        wall=resumed.wall_time_seconds if resumed else 0.0,
        commands=commands,
        chosen=dict(plan.chosen),
        device_data=on_device,
    )  # fmt: skip


def _optimizer_and_schedule(
    model: nn.Module, recipe: Recipe, entry: ZooEntry, n_train: int, resumed: ResumedRun | None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's optimizer (the resumed state loaded), and its schedule positioned after
    the resumed epochs."""
    optimizer = make_optimizer(model, recipe, entry.spec.head)
    if resumed:
        optimizer.load_state_dict(resumed.optimizer_state)
    steps = steps_per_epoch(n_train, recipe.batch_size)
    done = (resumed.epoch if resumed else 0) * steps
    return optimizer, make_scheduler(optimizer, recipe, steps * recipe.epochs, done)


def _pick_lr(run: TrainingRun) -> None:
    """`--lr auto`: a range test on the training data (seeded as an epoch 0) sets the peak
    learning rate; the optimizer and schedule are made again with it."""
    epoch_seed = run.settings.seed * 100_003
    torch.manual_seed(epoch_seed)
    started = time.perf_counter()
    test = lr_range_test(
        run.model,
        run.recipe,
        _epoch_batches(run, epoch_seed),
        head=run.entry.spec.head,
        device=run.options.device,
        train_mode=run.step.train_mode,
    )
    run.wall += time.perf_counter() - started
    run.recipe = replace(run.recipe, lr=test.lr)
    run.step.optimizer, run.step.scheduler = _optimizer_and_schedule(
        run.model, run.recipe, run.entry, len(run.train_set), None
    )
    why = (
        f"learning-rate range test over {test.steps} batches: half a decade below the rate "
        f"with the lowest loss ({test.min_loss_lr:.3g})"
        if test.broke_down
        else f"learning-rate range test over {test.steps} batches: the loss never broke down "
        f"up to {test.end:g}, so the {run.entry.arch} recipe's rate is kept"
    )
    run.chosen["lr"] = {"value": test.lr, "why": why, "range_test": test.record()}
    tqdm.write(f"{run.entry.name}: --lr auto picked {test.lr:g} ({why})", file=sys.stderr)


def _epoch_batches(run: TrainingRun, epoch_seed: int) -> Iterable[Batch]:
    """The training batches of one epoch, shuffled (and augmented) from `epoch_seed`: from the
    split held on the GPU when there is one (`cnnzoo.zoo.device_data`), else a DataLoader's."""
    if run.device_data is not None:
        return run.device_data.epoch(run.recipe.batch_size, epoch_seed)
    return loader_batches(
        run.train_set,
        batch_size=run.recipe.batch_size,
        generator=torch.Generator().manual_seed(epoch_seed),
        workers=run.workers,
        pin=run.options.device == "cuda",
    )


def _train_epoch(run: TrainingRun, epoch: int) -> dict[str, Any]:
    """Train epoch `epoch`, evaluate, record and checkpoint it; its test metrics."""
    entry, recipe, device = run.entry, run.recipe, run.options.device
    started = time.perf_counter()
    epoch_seed = run.settings.seed * 100_003 + epoch
    torch.manual_seed(epoch_seed)  # augmentation and dropout of this epoch
    batches = _epoch_batches(run, epoch_seed)
    run.step.train_mode(run.model)
    stats = train_one_epoch(
        run.step,
        batches,
        device=device,
        description=f"{entry.name} epoch {epoch}/{recipe.epochs}",
        progress=run.options.progress,
    )
    metrics = evaluate(run.model, run.test_batches(), entry.labels, device=device)
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
    save_train_state(run.model_dir, run.model, run.step.optimizer, run.state_info(epoch))
    return metrics


def _command_for(options: TrainOptions) -> str:
    """A `cnnzoo train` line equivalent to `options` (when called from Python, not the CLI)."""
    parts = ["cnnzoo", "train", options.model, "--out", str(options.out)]
    for flag, value in (
        ("--dataset", options.dataset),
        ("--name", options.name),
        ("--input-size", options.input_size),
        ("--val-split", options.val_split),
        ("--augment", options.augment),
        (
            "--init",
            options.init.spec if isinstance(options.init, PretrainedWeights) else options.init,
        ),
        ("--backbone-lr-scale", options.backbone_lr_scale),
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
