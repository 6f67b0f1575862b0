"""`cnnzoo` subcommands owned by the `zoo` package: list, train, eval, export.

The registry is plain data, so `list` and the parsers import nothing heavy; the handlers of
train, eval and export import their modules (torch, onnx) when they run, so that building the
parser (`cnnzoo --help`) stays cheap.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from cnnzoo.errors import InvalidInput
from cnnzoo.zoo import get_entry, list_models


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `cnnzoo` parser."""
    _register_list(sub)
    _register_train(sub)
    _register_eval(sub)
    _register_export(sub)


# -- list -----------------------------------------------------------------------------------


def _register_list(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "list",
        help="list the model zoo",
        description="List every zoo entry: dataset, input shape, classes, shipped weights.",
    )
    parser.add_argument(
        "patterns", nargs="*", metavar="PATTERN", help="glob filter, e.g. 'resnet*'"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.set_defaults(func=_cmd_list)


def _list_row(name: str) -> dict[str, Any]:
    entry = get_entry(name)
    card = entry.card() or {}
    metrics = card.get("metrics", {})
    weights = card.get("weights", {})
    return {
        "model": name,
        "dataset": entry.dataset,
        "input_shape": list(entry.input_shape),
        "classes": entry.num_classes,
        "trained": entry.weights_file is not None,
        "top1": metrics.get("top1"),
        "sha256": weights.get("sha256"),
    }


def _cmd_list(args: argparse.Namespace) -> int:
    rows = [_list_row(name) for name in list_models(include=args.patterns or None)]
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    table = [["MODEL", "DATASET", "INPUT", "CLASSES", "WEIGHTS", "TOP-1", "SHA256"]]
    for row in rows:
        table.append(
            [
                row["model"],
                row["dataset"],
                "x".join(map(str, row["input_shape"])),
                str(row["classes"]),
                "trained" if row["trained"] else "untrained",
                f"{100 * row['top1']:.2f}%" if row["top1"] is not None else "-",
                (row["sha256"] or "-")[:12],
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


# -- train ----------------------------------------------------------------------------------


def _register_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train a zoo model",
        description="Train a zoo model with its recipe; writes "
        "OUT/MODEL/epochs/epoch_NNN.safetensors each epoch, then OUT/MODEL/model.safetensors "
        "and card.json.",
    )
    parser.add_argument("model", help="zoo entry, see `cnnzoo list`")
    parser.add_argument("--epochs", type=int, help="number of epochs (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: the recipe's)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs"), help="output folder (default runs/)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in --out"
    )
    parser.add_argument(
        "--stop-after", type=int, metavar="N", help="stop after N epochs of this run (resume later)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="dataset folder (default $CNNZOO_DATA or ./data)"
    )
    parser.add_argument("--download", action="store_true", help="download the dataset if missing")
    parser.add_argument("--train-subset", type=int, metavar="N", help="train on the first N images")
    parser.add_argument(
        "--test-subset", type=int, metavar="N", help="evaluate on the first N images"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="data-loading processes (default 0 on cpu, up to 8 on cuda); part of the recipe's "
        "randomness: the same seed and N give the same run",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from cnnzoo.zoo.train import TrainOptions, train  # imports torch: only when training

    options = TrainOptions(
        model=args.model,
        out=args.out,
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
    result = train(options)
    print(result.summary())
    return 0


# -- eval -----------------------------------------------------------------------------------


def _register_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate a zoo model on its test set",
        description="Top-1, top-5 and per-class accuracy on the model's test set.",
    )
    parser.add_argument("model", help="zoo entry, see `cnnzoo list`")
    parser.add_argument(
        "--weights", default="default", help="weights file (default: the shipped weights)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="dataset folder (default $CNNZOO_DATA or ./data)"
    )
    parser.add_argument(
        "--dataset", help="evaluate on an ImageFolder path instead of the entry's test set"
    )
    parser.add_argument("--download", action="store_true", help="download the dataset if missing")
    parser.add_argument("--subset", type=int, metavar="N", help="evaluate on the first N images")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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
        )
    )
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(
            f"{report['model']} on {report['dataset']} ({report['n']} images): "
            f"top-1 {100 * report['top1']:.2f}%  top-5 {100 * report['top5']:.2f}%"
        )
        for label, accuracy in report["per_class"].items():
            print(f"  {label:>20}  {100 * accuracy:6.2f}%")
    return 0


# -- export ---------------------------------------------------------------------------------


def _register_export(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export zoo models to an ONNX model repository",
        description="Export to a Triton-layout model repository: config.pbtxt, labels.txt, "
        "VERSION/model.onnx (+ model.safetensors, manifest.json), parity-checked against PyTorch.",
    )
    parser.add_argument("model", nargs="?", help="zoo entry (or --all)")
    parser.add_argument("--all", action="store_true", help="export every entry that has weights")
    parser.add_argument(
        "--include-untrained", action="store_true", help="with --all, also the untrained entries"
    )
    parser.add_argument("--weights", help="weights file (default: the shipped weights)")
    parser.add_argument("--repository", type=Path, required=True, help="model repository folder")
    parser.add_argument("--version", type=int, help="version number (default: latest + 1)")
    parser.add_argument("--fp16", action="store_true", help="half-precision graph (FP32 in/out)")
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
    parser.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    # imports torch, onnx and onnxruntime: only when exporting
    from cnnzoo.zoo.export import ExportOptions, export_model, models_to_export

    if args.all == (args.model is not None):
        raise InvalidInput("name one MODEL or pass --all")
    if args.all and (args.weights or args.version is not None):
        raise InvalidInput("--weights and --version apply to one model, not --all")
    names = models_to_export(args.all, args.model, args.include_untrained)
    for name in names:
        summary = export_model(
            ExportOptions(
                model=name,
                repository=args.repository,
                weights=args.weights,
                version=args.version,
                fp16=args.fp16,
                max_batch_size=args.max_batch_size,
                data_dir=args.data_dir,
                skip_unchanged=args.skip_unchanged,
            )
        )
        if args.json:
            print(json.dumps(summary, sort_keys=True))
        elif summary["skipped"]:
            sha = summary["source_weights_sha256"]
            weights = f"weights {sha[:12]}" if sha else "untrained"
            print(
                f"{name}: up to date, version {summary['version']} -> {summary['path']} "
                f"(same {weights}, {summary['precision']}, same config); nothing written"
            )
        else:
            parity = summary["parity"]
            figure = (
                f"max|diff| {parity['max_abs_diff']:.2e}"
                if summary["precision"] == "fp32"
                else f"top-1 agreement {parity['top1_agreement']:.3f}"
            )
            print(
                f"{name}: version {summary['version']} -> {summary['path']} "
                f"({summary['precision']}, {figure} on {parity['n']} {parity['inputs']} inputs, "
                f"{summary['seconds']:.1f}s)"
            )
    return 0


def _command_line() -> str:
    """The command as typed, for model cards."""
    argv = list(sys.argv) or ["cnnzoo"]
    name = Path(argv[0]).name
    # `python -m cnnzoo` runs cnnzoo/__main__.py: the card names the console script instead.
    argv[0] = "cnnzoo" if name == "__main__.py" else name
    return shlex.join(argv)
