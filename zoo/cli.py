"""`cnnzoo` subcommands owned by the `zoo` package: list, train, eval, export.

The registry is plain data, so `list` and the parsers import nothing heavy; the handlers of
train, eval and export import their modules (torch, onnx) when they run, so that building the
parser (`cnnzoo --help`) stays cheap.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from cnnzoo.errors import InvalidInput, NotFound
from cnnzoo.zoo import get_entry, list_models
from cnnzoo.zoo.architectures import get_architecture, list_architectures
from cnnzoo.zoo.augment import AUGMENTATIONS
from cnnzoo.zoo.examples import copy_examples


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `cnnzoo` parser."""
    _register_list(sub)
    _register_train(sub)
    _register_eval(sub)
    _register_export(sub)
    _register_examples(sub)


# -- list -----------------------------------------------------------------------------------


def _register_list(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "list",
        help="list the model zoo (or its architectures)",
        description="List every zoo entry: dataset, input shape, classes, shipped weights. "
        "With --architectures, the architectures `cnnzoo train ARCH --dataset ...` takes, with "
        "their parameter counts. A pattern that matches nothing is an error (exit 3).",
    )
    parser.add_argument(
        "patterns", nargs="*", metavar="PATTERN", help="glob filter, e.g. 'resnet*'"
    )
    parser.add_argument(
        "--architectures", action="store_true", help="list architectures instead of models"
    )
    parser.add_argument(
        "--classes", type=int, default=10, help="with --architectures: classes (default 10)"
    )
    parser.add_argument(
        "--channels", type=int, choices=(1, 3), default=3,
        help="with --architectures: input channels (default 3)",
    )  # fmt: skip
    parser.add_argument(
        "--input-size", type=int, metavar="PX",
        help="with --architectures: say which take this input side",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.set_defaults(func=_cmd_list)


def _list_row(name: str) -> dict[str, Any]:
    entry = get_entry(name)
    card = entry.card() or {}
    metrics = card.get("metrics", {})
    weights = card.get("weights", {})
    return {
        "model": name,
        "arch": entry.arch,
        "dataset": entry.dataset,
        "input_shape": list(entry.input_shape),
        "classes": entry.num_classes,
        "trained": entry.weights_file is not None,
        "top1": metrics.get("top1"),
        "sha256": weights.get("sha256"),
    }


def _cmd_list(args: argparse.Namespace) -> int:
    if args.architectures:
        return _list_architectures(args)
    names = list_models(include=args.patterns or None)
    if not names:
        raise NotFound(
            f"no model matches {' '.join(args.patterns)}; models: {', '.join(list_models())}"
        )
    rows = [_list_row(name) for name in names]
    if args.json:
        _print_json(rows)
        return 0
    table = [["MODEL", "ARCH", "DATASET", "INPUT", "CLASSES", "WEIGHTS", "TOP-1", "SHA256"]]
    for row in rows:
        table.append(
            [
                row["model"],
                row["arch"],
                row["dataset"],
                "x".join(map(str, row["input_shape"])),
                str(row["classes"]),
                "trained" if row["trained"] else "untrained",
                f"{100 * row['top1']:.2f}%" if row["top1"] is not None else "-",
                (row["sha256"] or "-")[:12],
            ]
        )
    _print_table(table)
    return 0


def _list_architectures(args: argparse.Namespace) -> int:
    if args.classes < 2:
        raise InvalidInput(f"--classes must be >= 2, got {args.classes}")
    if args.input_size is not None and args.input_size < 1:
        raise InvalidInput(f"--input-size must be >= 1, got {args.input_size}")
    names = [
        n
        for n in list_architectures()
        if not args.patterns or any(fnmatch.fnmatchcase(n, p) for p in args.patterns)
    ]
    if not names:
        raise NotFound(
            f"no architecture matches {' '.join(args.patterns)}; architectures: "
            f"{', '.join(list_architectures())}"
        )
    rows = []
    for name in names:
        arch = get_architecture(name)
        channels = args.channels if args.channels in arch.channels else 3
        rows.append(
            {
                "arch": name,
                "family": arch.family,
                "fixed_input": arch.fixed_input,
                "min_input": arch.min_input,
                "channels": list(arch.channels),
                "params": arch.parameter_count(args.classes, channels),  # imports torch
                "classes": args.classes,
                "takes_input_size": None
                if args.input_size is None
                else arch.takes_input_size(args.input_size),
                "torchvision": arch.torchvision,
                "description": arch.description,
                "paper": arch.paper,
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    table = [["ARCH", "FAMILY", "INPUT", "PARAMS", "DESCRIPTION"]]
    for row in rows:
        size = (
            f"{row['fixed_input']}x{row['fixed_input']}"
            if row["fixed_input"]
            else f">= {row['min_input']}"
        )
        if args.input_size is not None and not row["takes_input_size"]:
            size += f" (not {args.input_size})"
        table.append([row["arch"], row["family"], size, f"{row['params']:,}", row["description"]])
    _print_table(table)
    return 0


def _print_json(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(json.dumps(row, sort_keys=True))


def _print_table(table: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())


# -- train ----------------------------------------------------------------------------------


def _register_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train a preset, or an architecture on any dataset",
        description="Train a preset with its recipe (`cnnzoo train lenet5-mnist`), or an "
        "architecture on a dataset (`cnnzoo train resnet18 --dataset DIR`: classes, colour "
        "mode, input size and normalisation come from the data; for an image folder also the "
        "augmentation, the learning rate (a range test), epochs and batch size, each written "
        "in the card with the reason). Writes OUT/NAME/epochs/epoch_NNN.safetensors each "
        "epoch, then OUT/NAME/model.safetensors, card.json and confusion.png (and "
        "best.safetensors for a run on other data); OUT/NAME is then a model for eval, export "
        "and explain.",
    )
    parser.add_argument(
        "model",
        help="a preset (`cnnzoo list`), with --dataset an architecture "
        "(`cnnzoo list --architectures`), or with --resume a run folder (runs/NAME)",
    )
    _add_data_arguments(parser.add_argument_group("data (a run of an architecture)"))
    _add_finetune_arguments(parser.add_argument_group("fine-tuning"))
    _add_recipe_arguments(parser.add_argument_group("recipe (default: the preset's or chosen)"))
    _add_run_arguments(parser.add_argument_group("the run"))
    parser.set_defaults(func=_cmd_train)


def _add_data_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--dataset",
        metavar="SPEC",
        help="mnist, fashion-mnist, cifar10, cifar100, or an image folder (train/ and test/ "
        "or val/ of class folders, or class folders with --val-split)",
    )
    group.add_argument(
        "--name", help="run name: OUT/NAME and the model's name (default ARCH-<dataset>)"
    )
    group.add_argument(
        "--input-size", type=int, metavar="PX", help="resize images to PX (default: theirs)"
    )
    group.add_argument(
        "--val-split",
        type=float,
        metavar="F",
        help="hold out a seeded, stratified fraction F of an image folder as its test split",
    )
    group.add_argument(
        "--strict",
        action="store_true",
        help="refuse unreadable images in an image folder instead of skipping them",
    )
    group.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        help="training augmentation (default: an image folder's by its images, small-affine "
        "for grey-scale and crop-flip for colour; else the recipe's)",
    )


def _add_finetune_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--init",
        metavar="SOURCE",
        help="start from other weights: `torchvision` (the architecture's default ImageNet "
        "weights, downloaded once into torch's cache), `torchvision:TAG` (e.g. IMAGENET1K_V2), "
        "a torchvision state dict (.pth) or a cnnzoo checkpoint; the classifier head is "
        "replaced to fit the classes",
    )
    group.add_argument("--freeze", action="store_true", help="with --init: train only the head")
    group.add_argument(
        "--backbone-lr-scale",
        type=float,
        metavar="F",
        help="learning rate of the layers below the head, as a fraction of the head's "
        "(default 0.1 when fine-tuning an image folder from --init, else 1)",
    )


def _add_recipe_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--epochs", type=int, help="number of epochs")
    group.add_argument("--batch-size", type=int, help="batch size")
    group.add_argument(
        "--lr",
        type=_learning_rate,
        metavar="LR|auto",
        help="peak learning rate, or auto: a range test on the data picks it (the default "
        "for image folders)",
    )
    group.add_argument("--seed", type=int, help="random seed (default 0)")


def _add_run_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--out", type=Path, default=Path("runs"), help="output folder (default runs/)"
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: `cnnzoo train runs/NAME --resume` (or the command "
        "that started it, plus --resume)",
    )
    group.add_argument(
        "--stop-after", type=int, metavar="N", help="stop after N epochs of this run (resume later)"
    )
    group.add_argument(
        "--data-dir", type=Path, help="dataset folder (default $CNNZOO_DATA or ./data)"
    )
    group.add_argument("--download", action="store_true", help="download the dataset if missing")
    group.add_argument(
        "--train-subset", type=int, metavar="N",
        help="train on N images drawn from every class in proportion (seeded by --seed)",
    )  # fmt: skip
    group.add_argument(
        "--test-subset", type=int, metavar="N",
        help="evaluate on N images drawn from every class in proportion (seed 0)",
    )  # fmt: skip
    group.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="data-loading processes (default 0 on cpu, up to 8 on cuda); part of the recipe's "
        "randomness: the same seed and N give the same run",
    )
    group.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    group.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bars (they are drawn on a terminal only)",
    )


def _learning_rate(text: str) -> float | str:
    """`--lr`: a number or `auto`."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or auto, not {text!r}") from None


def _cmd_train(args: argparse.Namespace) -> int:
    # imports torch: only when training
    from cnnzoo.zoo.train import TrainingInterrupted, TrainOptions, train

    options = TrainOptions(
        model=args.model,
        out=args.out,
        dataset=args.dataset,
        name=args.name,
        input_size=args.input_size,
        val_split=args.val_split,
        strict=args.strict,
        init=args.init,
        freeze=args.freeze,
        backbone_lr_scale=args.backbone_lr_scale,
        augment=args.augment,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        resume=args.resume,
        stop_after=args.stop_after,
        data_dir=args.data_dir,
        download=args.download,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        threads=args.threads,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
        command=_command_line(),
    )
    try:
        result = train(options)
    except TrainingInterrupted as stop:  # what is saved and how to continue, then exit 130
        print(f"cnnzoo train: {stop.hint}", file=sys.stderr)
        raise
    print(result.summary())
    return 0


# -- eval -----------------------------------------------------------------------------------


def _register_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate a zoo model or a run on its test set",
        description="Top-1, top-5 and per-class accuracy on the model's test set (a run "
        "folder's: its image folder's test split, a held-out one drawn again).",
    )
    parser.add_argument("model", help="zoo entry (`cnnzoo list`) or a run folder (runs/NAME)")
    parser.add_argument(
        "--weights",
        default="default",
        help="weights file (default: the model's own), or torchvision's by name for the "
        "torchvision architectures: torchvision (their default) or torchvision:TAG",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="dataset folder (default $CNNZOO_DATA or ./data)"
    )
    parser.add_argument(
        "--dataset", help="evaluate on an ImageFolder path instead of the entry's test set"
    )
    parser.add_argument(
        "--misclassified",
        type=Path,
        metavar="DIR",
        help="draw the worst mistakes (the surest wrong answers) into the new folder DIR as "
        "images captioned with their true and predicted labels, plus mistakes.json",
    )
    parser.add_argument(
        "--misclassified-count", type=int, default=50, metavar="N",
        help="how many mistakes --misclassified draws (default 50)",
    )  # fmt: skip
    parser.add_argument("--download", action="store_true", help="download the dataset if missing")
    parser.add_argument(
        "--subset", type=int, metavar="N",
        help="evaluate on N images drawn from every class in proportion (seed 0, as "
        "`train --test-subset` draws them)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (it is drawn on a terminal only)",
    )
    parser.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from cnnzoo.zoo.evaluate import EvalOptions, evaluate_entry  # imports torch: only when run

    report = evaluate_entry(
        EvalOptions(
            model=args.model,
            weights=args.weights,
            data_dir=args.data_dir,
            dataset=args.dataset,
            download=args.download,
            subset=args.subset,
            batch_size=args.batch_size,
            threads=args.threads,
            progress=not (args.no_progress or args.json),
            misclassified=args.misclassified,
            misclassified_count=args.misclassified_count,
        )
    )
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(
            f"{report['model']} on {report['dataset']} ({report['n']} images): "
            f"top-1 {100 * report['top1']:.2f}%  top-5 {100 * report['top5']:.2f}%"
        )
        print(f"  {'class':>20}  {'recall':>7}  {'precision':>9}")
        for label, recall in report["recall"].items():
            precision = report["precision"][label]
            print(f"  {label:>20}  {_percent(recall):>7}  {_percent(precision):>9}")
        wrote = report.get("misclassified")
        if wrote:
            print(
                f"{wrote['misclassified']} images misclassified; the {wrote['written']} surest "
                f"are drawn in {wrote['folder']} (mistakes.json lists them)"
            )
    return 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# -- export ---------------------------------------------------------------------------------


def _register_export(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export zoo models to an ONNX model repository",
        description="Export to a Triton-layout model repository: config.pbtxt, labels.txt, "
        "VERSION/model.onnx (+ model.safetensors, manifest.json), parity-checked against PyTorch.",
    )
    parser.add_argument("model", nargs="?", help="zoo entry, a run folder (runs/NAME), or --all")
    parser.add_argument("--all", action="store_true", help="export every entry that has weights")
    parser.add_argument(
        "--include-untrained", action="store_true", help="with --all, also the untrained entries"
    )
    parser.add_argument(
        "--weights",
        help="weights file (default: the shipped weights), or for the *-imagenet entries "
        "torchvision's by name: torchvision or torchvision:TAG",
    )
    parser.add_argument("--repository", type=Path, required=True, help="model repository folder")
    parser.add_argument("--version", type=int, help="version number (default: latest + 1)")
    parser.add_argument("--fp16", action="store_true", help="half-precision graph (FP32 in/out)")
    parser.add_argument(
        "--input-dtype",
        choices=("fp32", "uint8"),
        default="fp32",
        help="the graph's input: fp32 (the preprocessed image, the default) or uint8 (its "
        "pixels after resize/crop/pad; scaling and normalisation in the graph: 4x fewer bytes)",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=64, help="max_batch_size (default 64)"
    )
    parser.add_argument("--data-dir", type=Path, help="dataset folder for the parity batch")
    parser.add_argument(
        "--skip-unchanged",
        action="store_true",
        help="write nothing for a model whose latest version was exported from the same "
        "weights (sha256), precision and config; say which version is up to date",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary per model")
    # after_export: steps other packages add (at the composition root, `cnnzoo.cli`), each
    # called as step(args, summary) after a model's export and returning fields for its summary
    parser.set_defaults(func=_cmd_export, after_export=[])


def _cmd_export(args: argparse.Namespace) -> int:
    # imports torch, onnx and onnxruntime: only when exporting
    from cnnzoo.zoo.export import ExportOptions, export_model, models_to_export

    if args.all == (args.model is not None):
        raise InvalidInput("name one MODEL or pass --all")
    if args.all and (args.weights or args.version is not None):
        raise InvalidInput("--weights and --version apply to one model, not --all")
    names = models_to_export(args.all, args.model, args.include_untrained)
    source = args.weights
    if source is not None and names:
        source = _export_weights(names[0], source)
    for number, name in enumerate(names, 1):
        if len(names) > 1:  # each export takes seconds: say which one runs (stderr: --json)
            print(f"[{number}/{len(names)}] exporting {name} ...", file=sys.stderr, flush=True)
        summary = export_model(
            ExportOptions(
                model=name,
                repository=args.repository,
                weights=source,
                version=args.version,
                fp16=args.fp16,
                input_dtype=args.input_dtype,
                max_batch_size=args.max_batch_size,
                data_dir=args.data_dir,
                skip_unchanged=args.skip_unchanged,
            )
        )
        if not args.json:
            print(_export_line(summary), flush=True)
        for step in args.after_export:
            summary.update(step(args, summary))
        if args.json:
            print(json.dumps(summary, sort_keys=True))
        sys.stdout.flush()
    return 0


def _export_weights(name: str, weights: str) -> str:
    """`--weights torchvision[:TAG]` as the checked file in torch's cache (other values as
    they are); refused where the weights' classes or preprocessing are not the entry's."""
    from cnnzoo.zoo.pretrained import is_pretrained_spec, pretrained_weights

    if not is_pretrained_spec(weights):
        return weights
    entry = get_entry(name)
    found = pretrained_weights(entry.spec, weights)
    if found.categories != entry.labels or found.preprocess != entry.preprocess:
        differs = "classes" if found.categories != entry.labels else "preprocessing"
        raise InvalidInput(
            f"--weights {weights}: the {differs} of {found.name} are not {entry.name}'s "
            f"({found.preprocess} against {entry.preprocess}); export torchvision's weights "
            f"whose preprocessing the entry has (`cnnzoo eval {entry.name} --weights {weights}` "
            "measures these with their own), or a run fine-tuned from them"
        )
    return str(found.fetch())


def _export_line(summary: dict[str, Any]) -> str:
    """One line saying what an export wrote (or that it was up to date)."""
    if summary["skipped"]:
        sha = summary["source_weights_sha256"]
        weights = f"weights {sha[:12]}" if sha else "untrained"
        return (
            f"{summary['model']}: up to date, version {summary['version']} -> "
            f"{summary['path']} "
            f"(same {weights}, {summary['precision']}, same config); nothing written"
        )
    parity = summary["parity"]
    figure = (
        f"max|diff| {parity['max_abs_diff']:.2e}"
        if summary["precision"] == "fp32"
        else f"top-1 agreement {parity['top1_agreement']:.3f}"
    )
    dtype = ", uint8 input" if summary["input_dtype"] == "uint8" else ""
    return (
        f"{summary['model']}: version {summary['version']} -> {summary['path']} "
        f"({summary['precision']}{dtype}, {figure} on {parity['n']} {parity['inputs']} "
        f"inputs, {summary['seconds']:.1f}s)"
    )


# -- examples -------------------------------------------------------------------------------


def _register_examples(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "examples",
        help="copy the example images and job files into a folder",
        description="Copy the shipped examples (MNIST test digits, one CIFAR-10 test image per "
        "class, job files) out of the installed package into DEST, so the README's commands "
        "run anywhere: `cnnzoo classify DEST/digits/*/*.png ...`, `cnnzoo job "
        "DEST/jobs/lenet5-digits.toml`.",
    )
    parser.add_argument("dest", type=Path, metavar="DEST", help="a new (or empty) folder")
    parser.set_defaults(func=_cmd_examples)


def _cmd_examples(args: argparse.Namespace) -> int:
    counts = copy_examples(args.dest)
    print(
        f"{args.dest}: {counts['digits']} MNIST digits, {counts['cifar10']} CIFAR-10 images, "
        f"{counts['jobs']} job files; try `cnnzoo job {args.dest / 'jobs' / 'lenet5-digits.toml'}`"
    )
    return 0


def _command_line() -> str:
    """The command as typed, for model cards."""
    argv = list(sys.argv) or ["cnnzoo"]
    name = Path(argv[0]).name
    # `python -m cnnzoo` runs cnnzoo/__main__.py: the card names the console script instead.
    argv[0] = "cnnzoo" if name == "__main__.py" else name
    return shlex.join(argv)
