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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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
from cnnzoo.zoo.cuda_training import prepare_cuda_model
from cnnzoo.zoo.datasets import NAMED_DATASETS, named_dataset_card
from cnnzoo.zoo.device_data import DeviceData
from cnnzoo.zoo.evaluate import evaluate, limit_dataset, torch_threads
from cnnzoo.zoo.finetune import freeze_all_but_head, head_train_mode, load_init
from cnnzoo.zoo.recipe import Recipe, make_optimizer, make_scheduler
from cnnzoo.zoo.registry import ZooEntry, get_entry, list_models
from cnnzoo.zoo.runs import check_run_name, default_run_name, plan_run

__all__ = ["TrainOptions", "TrainResult", "train", "STATE_FILE", "data_workers"]

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
                f"{self.model_dir}; continue with --resume"
            )
        assert self.card is not None
        metrics = self.card["metrics"]
        return (
            f"{self.model}: {self.epochs} epochs, test top-1 {100 * metrics['top1']:.2f}% "
            f"top-5 {100 * metrics['top5']:.2f}% ({metrics['n']} images), "
            f"{self.card['wall_time_seconds']:.0f}s; wrote {self.model_dir / 'model.safetensors'} "
            f"and card.json"
        )


def _recipe_for(entry: ZooEntry, options: TrainOptions, saved: dict[str, Any] | None) -> Recipe:
    recipe = Recipe(**saved["recipe"]) if saved else entry.recipe
    overrides = {
        k: v
        for k, v in {
            "epochs": options.epochs,
            "batch_size": options.batch_size,
            "lr": options.lr,
        }.items()
        if v is not None
    }
    if saved:
        changed = {k: v for k, v in overrides.items() if getattr(recipe, k) != v}
        if changed:
            raise InvalidInput(
                "--resume continues the run with its own settings; it used "
                + ", ".join(f"--{k.replace('_', '-')} {getattr(recipe, k)}" for k in changed)
            )
    return replace(recipe, **overrides)


def _settings(options: TrainOptions, saved: dict[str, Any] | None) -> dict[str, Any]:
    """Seed and subsets: explicit options, else the resumed run's, else defaults."""
    defaults = saved or {"seed": 0, "train_subset": None, "test_subset": None}
    result = {}
    for key in ("seed", "train_subset", "test_subset"):
        value = getattr(options, key)
        if saved and value is not None and value != saved[key]:
            raise InvalidInput(
                f"--resume continues the run with its own settings; it used "
                f"--{key.replace('_', '-')} {saved[key]}"
            )
        result[key] = defaults[key] if value is None else value
    return result


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
    if options.dataset is None:
        run_name = _preset(options.model).name
    else:
        run_name = options.name or default_run_name(options.model, options.dataset)
    model_dir = options.out / run_name
    resumed: tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]] | None = None
    if options.resume:
        resumed = load_train_state(model_dir)
    elif model_dir.exists() and any(model_dir.iterdir()):
        raise AlreadyExists(
            f"{model_dir} already holds a training run; continue it with --resume or choose "
            f"another --out"
        )
    saved = resumed[2] if resumed else None
    plan = _plan(options, saved)
    recipe = _recipe_for(plan.entry, options, saved)
    settings = _settings(options, saved["settings"] if saved else None)
    augment = build_augmentation(recipe.augment, plan.entry.preprocess.input_size)
    plan.train_set.transform = plan.entry.preprocess.torch_transform(augment)
    plan.test_set.transform = plan.entry.preprocess.torch_transform()
    train_set = limit_dataset(plan.train_set, settings["train_subset"])
    test_set = limit_dataset(plan.test_set, settings["test_subset"])
    with torch_threads(options.threads), _deterministic(options.device):
        return _run(
            plan.entry, options, recipe, settings, train_set, test_set, model_dir, resumed,
            plan.dataset_card,
        )  # fmt: skip


def _preset(name: str) -> ZooEntry:
    """The preset `cnnzoo train NAME` (without --dataset) trains."""
    if name in ARCHITECTURES:
        raise InvalidInput(
            f"{name} is an architecture: name the data with --dataset (one of "
            f"{', '.join(NAMED_DATASETS[:-1])} or an image folder)"
        )
    if name not in list_models():
        raise NotFound(
            f"unknown model {name!r}; known models: {', '.join(list_models())}; architectures "
            f"(with --dataset): {', '.join(ARCHITECTURES)}"
        )
    return get_entry(name)


def _plan(options: TrainOptions, saved: dict[str, Any] | None) -> _Plan:
    """The entry and splits of this run: a preset's, the resumed run's, or derived from data."""
    opened = {"data_dir": options.data_dir, "download": options.download, "offer_download": True}
    if options.dataset is None:
        entry = _preset(options.model)
        card = named_dataset_card(entry.dataset, options.data_dir)
        train_set = entry.open_dataset("train", **opened)
        return _Plan(entry, train_set, entry.open_dataset("test", **opened), card)
    if saved is not None:  # the entry the run derived when it started
        entry = ZooEntry.from_card(saved["entry"], None, where=f"{STATE_FILE} of the run")
        strict = {"strict": options.strict}
        return _Plan(
            entry,
            entry.open_dataset("train", **opened, **strict),
            entry.open_dataset("test", **opened, **strict),
            saved["dataset_card"],
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


def _run(
    entry: ZooEntry,
    options: TrainOptions,
    recipe: Recipe,
    settings: dict[str, Any],
    train_set: Any,
    test_set: Any,
    model_dir: Path,
    resumed: tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]] | None,
    dataset_card: dict[str, Any],
) -> TrainResult:
    seed = settings["seed"]
    device = options.device
    workers = data_workers(options)
    torch.manual_seed(seed)
    model = entry.build()
    saved = resumed[2] if resumed else None
    init: dict[str, Any] | None = saved.get("init") if saved else None
    if resumed:
        model.load_state_dict(resumed[0])
    elif options.init is not None:
        init = load_init(model, options.init, entry.spec, freeze=options.freeze)
    frozen = bool(init and init["frozen"])
    if frozen:
        freeze_all_but_head(model, entry.spec)
    model.to(device)
    if device == "cuda":  # layout, bf16, compilation: cnnzoo.zoo.cuda_training
        prepare_cuda_model(model)
    optimizer = make_optimizer(model, recipe)
    if resumed:
        optimizer.load_state_dict(resumed[1])

    # MNIST/CIFAR-10 on CUDA: both splits on the GPU, augmented there (cnnzoo.zoo.device_data)
    on_device = DeviceData.for_run(train_set, test_set, entry.preprocess, recipe.augment, device)
    workers = 0 if on_device else workers
    pin = device == "cuda"
    test_loader = DataLoader(
        test_set, batch_size=256, shuffle=False, num_workers=workers, pin_memory=pin
    )
    if on_device:
        test_loader = on_device.test_batches()
    steps_per_epoch = math.ceil(len(train_set) / recipe.batch_size)
    start_epoch = saved["epoch"] if saved else 0
    scheduler = make_scheduler(
        optimizer, recipe, steps_per_epoch * recipe.epochs, start_epoch * steps_per_epoch
    )
    history: list[dict[str, Any]] = saved["history"] if saved else []
    wall = float(saved["wall_time_seconds"]) if saved else 0.0
    commands = saved["command"] if saved else ""
    command = options.command or _command_for(options)
    commands = f"{commands}; {command}" if commands else command
    metrics: dict[str, Any] = {}

    for epoch in range(start_epoch + 1, recipe.epochs + 1):
        started = time.perf_counter()
        epoch_seed = seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)  # augmentation and dropout of this epoch
        generator = torch.Generator().manual_seed(epoch_seed)
        loader = DataLoader(
            train_set,
            batch_size=recipe.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=workers,  # worker w seeds from the generator: same order, same crops
            pin_memory=pin,
            drop_last=False,
        )
        if on_device:  # the epoch's order, crops and flips drawn from the same seed
            loader = on_device.epoch(recipe.batch_size, epoch_seed)
        if frozen:
            head_train_mode(model, entry.spec)
        else:
            model.train()
        # Running sums stay on the device: reading them every step would stall a GPU.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        bar = tqdm(
            loader,
            desc=f"{entry.name} epoch {epoch}/{recipe.epochs}",
            disable=None if options.progress else True,  # None: only on a terminal
            leave=False,
        )
        for step, (images, targets) in enumerate(bar):
            images = images.to(device, non_blocking=pin)
            targets = targets.to(device, non_blocking=pin)
            logits = model(images)
            loss = F.cross_entropy(logits, targets, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().double() * targets.numel()
            correct += (logits.detach().argmax(1) == targets).sum()
            seen += targets.numel()
            if options.progress and step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}")
        loss_sum, correct = float(loss_sum), int(correct)
        lr_used = optimizer.param_groups[0]["lr"]
        metrics = evaluate(model, test_loader, entry.labels, device=device)
        seconds = time.perf_counter() - started
        wall += seconds
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "train_top1": correct / seen,
                "test_top1": metrics["top1"],
                "test_loss": metrics["loss"],
                "lr": lr_used,
                "seconds": round(seconds, 2),
            }
        )
        tqdm.write(
            f"{entry.name} epoch {epoch}/{recipe.epochs}: train loss {loss_sum / seen:.4f} "
            f"acc {correct / seen:.4f}, test top-1 {metrics['top1']:.4f} ({seconds:.0f}s)",
            file=sys.stderr,
        )
        meta = {"zoo_entry": entry.name, "epoch": str(epoch), "seed": str(seed)}
        save_weights(model, epoch_path(model_dir, epoch), meta, entry.weights_dtype)
        save_train_state(
            model_dir,
            model,
            optimizer,
            {
                "epoch": epoch,
                "recipe": recipe.to_dict(),
                "settings": settings,
                "history": history,
                "wall_time_seconds": wall,
                "command": commands,
                "entry": entry.card_fields(),
                "dataset_card": dataset_card,
                "init": init,
            },
        )
        stopping = options.stop_after is not None and epoch - start_epoch >= options.stop_after
        if stopping and epoch < recipe.epochs:
            return TrainResult(entry.name, model_dir, epoch, recipe.epochs)

    if entry.weights_dtype != "float32":  # the card measures the weights as they are stored
        model.load_state_dict(decode_state(encode_state(model.state_dict(), entry.weights_dtype)))
        metrics = {}
    if not metrics:  # resumed a finished run, or rounded weights: measure the final weights
        metrics = evaluate(model, test_loader, entry.labels, device=device)

    weights = model_dir / "model.safetensors"
    save_weights(
        model,
        weights,
        {"zoo_entry": entry.name, "epochs": str(recipe.epochs), "seed": str(seed)},
        entry.weights_dtype,
    )
    card = build_card(
        {**entry.card_fields(), "recipe": recipe.to_dict()},
        model=model,
        weights=weights,
        seed=seed,
        dataset={
            **dataset_card,
            "n_train": len(train_set),
            "n_test": len(test_set),
            "train_subset": settings["train_subset"],
            "test_subset": settings["test_subset"],
        },
        metrics=metrics,
        history=history,
        wall_time_seconds=wall,
        hardware={**hardware_info(device), "data_workers": workers},
        command=commands,
        init=init,
    )
    atomic_write_json(model_dir / "card.json", card)
    (model_dir / STATE_FILE).unlink(missing_ok=True)
    return TrainResult(entry.name, model_dir, recipe.epochs, recipe.epochs, card)


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
