"""`cnnzoo explain-export`, and the `--explanations` option it adds to `cnnzoo export`.

Both build explanation models (`cnnzoo.interpret.graph_export.writer`). `explain-export` needs
nothing but the repository (any Triton-layout repository of ONNX classifiers); `cnnzoo export`
writes them beside each classifier it exports, with parity figures against PyTorch. `zoo` may
not import `interpret`, so the composition root (`cnnzoo.cli`) hands the export command to
`extend_export`, which adds the option and a step that runs after each export.

Parsing imports nothing heavy; the handlers import onnx (and, for `export`, torch).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnzoo.errors import InvalidInput, UnsupportedModel
from cnnzoo.interpret.graphs.methods import GRAPH_METHODS, TABLE

__all__ = ["extend_export", "parse_methods", "register"]

_METHODS_HELP = "; ".join(f"{m.name}: {m.summary}" for m in TABLE)


def parse_methods(text: str) -> tuple[str, ...]:
    """ "all", "none" or a comma-separated list of explanation methods."""
    value = text.strip()
    if value == "all":
        return GRAPH_METHODS
    if value == "none":
        return ()
    methods = tuple(m.strip() for m in value.split(",") if m.strip())
    unknown = [m for m in methods if m not in GRAPH_METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown explanation method {', '.join(map(repr, unknown)) or repr(text)}; give "
            f"all, none or some of: {', '.join(GRAPH_METHODS)}"
        )
    return tuple(dict.fromkeys(methods))


def register(sub: argparse._SubParsersAction) -> None:
    """Add `explain-export` to the `cnnzoo` parser."""
    parser = sub.add_parser(
        "explain-export",
        help="build explanation models (ONNX graphs: forward pass + attribution method) for the "
        "classifiers of a model repository",
        description="For each classifier (default: every classifier of the repository), writes "
        "MODEL.METHOD/config.pbtxt and MODEL.METHOD/VERSION/{model.onnx,manifest.json}: an ONNX "
        "graph that computes the classifier and the method's map in one run, so ONNX Runtime or "
        "Triton serves explanations without PyTorch. Works from model.onnx alone (a repository "
        "laid out for Triton by other means too). Each model is self-checked (its logits equal "
        "the classifier's; the backward pass agrees with finite differences) and written whole "
        "or not at all; an existing one built from the same classifier is left as it is. "
        f"Methods: {_METHODS_HELP}.",
    )
    parser.add_argument("repository", type=Path, help="the model repository folder")
    parser.add_argument(
        "models", nargs="*", metavar="MODEL", help="classifiers to explain (default: all)"
    )
    parser.add_argument(
        "--methods",
        type=parse_methods,
        default=GRAPH_METHODS,
        metavar="METHODS",
        help="comma-separated methods, or all (default)",
    )
    parser.add_argument(
        "--version", type=int, help="the classifiers' version (default: each one's latest)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per model")
    parser.set_defaults(func=_cmd_explain_export)


def extend_export(parser: argparse.ArgumentParser) -> None:
    """Give `cnnzoo export` the `--explanations` option and the step that writes them."""
    parser.add_argument(
        "--explanations",
        type=parse_methods,
        default=GRAPH_METHODS,
        metavar="METHODS",
        help="explanation models to write beside each exported classifier version: "
        "comma-separated methods, all (default) or none (see `cnnzoo explain-export --help`); "
        "an up-to-date version skipped by --skip-unchanged gets none",
    )
    steps = list(parser.get_default("after_export") or [])
    parser.set_defaults(after_export=[*steps, _after_export])


def _cmd_explain_export(args: argparse.Namespace) -> int:
    from cnnzoo.interpret.graph_export.writer import export_explanations, is_explanation
    from cnnzoo.zoo.repository import ModelRepository

    if args.version is not None and args.version < 1:
        raise InvalidInput(f"--version must be >= 1, got {args.version}")
    repo = ModelRepository(args.repository)
    models = list(args.models) or [m for m in repo.models() if not is_explanation(repo, m)]
    if not models:
        raise InvalidInput(f"{args.repository} holds no classifier to explain")
    explicit = args.methods is not GRAPH_METHODS  # asked for by name: a refusal is an error
    refused: list[str] = []
    for number, model in enumerate(models, 1):
        if len(models) > 1:
            print(f"[{number}/{len(models)}] {model}", file=sys.stderr, flush=True)
        rows = export_explanations(
            args.repository, model, version=args.version, methods=args.methods, progress=_progress
        )
        refused += [
            f"{row['model']}: {row['reason']}" for row in rows if row["status"] == "refused"
        ]
        _report(rows, args.json)
    if explicit and refused:
        raise UnsupportedModel(f"{len(refused)} explanation model(s) refused, first {refused[0]}")
    return 0


def _after_export(args: argparse.Namespace, summary: dict[str, Any]) -> dict[str, Any]:
    """After `cnnzoo export` wrote a classifier version: its explanation models, with parity
    figures against PyTorch. A version found up to date (`--skip-unchanged`) is left as it is,
    explanation models included (`cnnzoo explain-export` builds missing ones)."""
    if not args.explanations or summary.get("skipped"):
        return {}
    from cnnzoo.interpret.graph_export.parity import pytorch_parity
    from cnnzoo.interpret.graph_export.writer import export_explanations

    rows = export_explanations(
        args.repository,
        summary["model"],
        version=summary["version"],
        methods=args.explanations,
        parity=pytorch_parity(args.repository, summary["model"], data_dir=args.data_dir),
        progress=_progress,
        # with --json the rows are part of the export's one summary line
        on_row=None if args.json else lambda row: _report([row], as_json=False),
    )
    return {"explanations": rows}


def _progress(line: str) -> None:
    """Each explanation model takes seconds to build and check: say which one runs (stderr, so
    --json output stays one object per line)."""
    print(f"  {line} ...", file=sys.stderr, flush=True)


def _report(rows: Sequence[dict[str, Any]], as_json: bool) -> None:
    for row in rows:
        if as_json:
            print(json.dumps(row, sort_keys=True))
            continue
        status = row["status"]
        if status == "refused":
            line = f"{row['model']}: refused: {row['reason']}"
        elif status == "up to date":
            line = f"{row['model']}: up to date, version {row['version']} -> {row['path']}"
        else:
            parity = row.get("parity") or {}
            figure = (
                f", PyTorch max rel diff {parity['max_rel_diff']:.1e} on {parity['n']} images"
                if parity
                else ""
            )
            fd = row["self_check"]["finite_differences"]["max_rel_error"]
            line = (
                f"{row['model']}: version {row['version']} -> {row['path']} (self-check: logits "
                f"{row['self_check']['logits_max_rel_diff']:.1e}, gradient vs finite "
                f"differences {fd:.1e}{figure}, {row['seconds']:.1f}s)"
            )
        print(line)
        for warning in row.get("warnings", []):
            print(f"  warning: {warning}", file=sys.stderr)
    sys.stdout.flush()
