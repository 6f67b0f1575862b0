"""`cnnzoo` subcommands owned by the `interpret` package: layers, explain, job, worker."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cnnzoo import zoo
from cnnzoo.errors import InvalidInput, UnsupportedModel
from cnnzoo.fileio import atomic_path, atomic_write_bytes
from cnnzoo.interpret.graph_export import cli as graph_export_cli
from cnnzoo.interpret.methods import METHODS, TABLE
from cnnzoo.zoo.images import read_image
from cnnzoo.zoo.repository import ModelRepository

METHOD_HELP = "; ".join(f"{method.name}: {method.summary}" for method in TABLE)
_MAX_PANEL = 2048  # longest side of one enlarged picture: bounds --scale and the figure's size


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `cnnzoo` parser."""
    _register_layers(sub)
    _register_explain(sub)
    _register_job(sub)
    _register_worker(sub)


def _register_layers(sub: argparse._SubParsersAction) -> None:
    layers = sub.add_parser(
        "layers",
        help="list a model's layers: names for job files, shapes, parameters, receptive fields",
        description="One row per module in execution order: the name job files use, the output "
        "shape (for conv/pool layers also O = (W - K + 2P)/S + 1), the parameters and the "
        "receptive field of one unit (size and stride in input pixels).",
    )
    layers.add_argument("model", help="a zoo entry (see `cnnzoo list`)")
    layers.set_defaults(func=_layers)


def _register_explain(sub: argparse._SubParsersAction) -> None:
    explain = sub.add_parser(
        "explain",
        help="attribute one image to a class and save the map as PNG",
        description="An attribution map of one image (any method of the table below), the same "
        "map the server's Explain RPC returns.",
    )
    explain.add_argument("image", type=Path, help="a PNG/JPEG file")
    explain.add_argument("--model", required=True, help="a zoo entry, or a model of --repository")
    explain.add_argument(
        "--weights",
        default="default",
        help='"default" (shipped weights), "none" (random init) or a .safetensors file',
    )
    explain.add_argument(
        "--repository",
        type=Path,
        help="take the model, weights and preprocessing from this model repository",
    )
    explain.add_argument("--version", type=int, help="repository version (default: latest)")
    explain.add_argument(
        "--method",
        default="guided-backprop",
        choices=METHODS,
        help=f"{METHOD_HELP} (default: guided-backprop)",
    )
    explain.add_argument(
        "--target", type=int, help="class index to explain (default: the predicted class)"
    )
    explain.add_argument(
        "--out",
        type=Path,
        required=True,
        help="where to write the figure (a .png file): the input, the map and the map over the "
        "input side by side, the class and its probability, and a colour bar",
    )
    explain.add_argument(
        "--scale",
        type=int,
        help="enlarge the pictures this many times, nearest-neighbour (default: so the image's "
        "short side is at least 256 px; at most 2048 px a side)",
    )
    explain.add_argument("--save-map", type=Path, help="also save the raw float32 map as .npy")
    explain.add_argument(
        "--layer",
        help="the layer of the methods that take one (grad-cam, guided-grad-cam; default: the "
        "last layer with a spatial output that runs once); see `cnnzoo layers MODEL`",
    )
    explain.add_argument(
        "--unit",
        metavar="CHANNEL[@Y,X]",
        help="project one unit of --layer instead of explaining a class (--method deconvnet, "
        "guided-backprop or gradient): the explorer's channel view; without @Y,X the channel's "
        "strongest position for this image",
    )
    explain.add_argument(
        "--quality",
        action="store_true",
        help="also print how trustworthy the map is: deletion and insertion areas (mean colour "
        "and ROAD imputation), Average Drop, and the randomisation checks (MPRT, random logit), "
        "beside a random map and an edge detector",
    )
    _threads_argument(explain)
    explain.set_defaults(func=_explain)


def _register_job(sub: argparse._SubParsersAction) -> None:
    job = sub.add_parser(
        "job",
        help="run an interpretability job file (TOML or JSON); resumable, shardable with torchrun",
        description="Runs the analyses of a job file and writes PNGs, manifest.json and "
        "index.html. Run it again after an interruption to resume; run it under "
        "`torchrun --nproc-per-node N` to split the dataset scan across N processes.",
    )
    job.add_argument("job_file", type=Path)
    job.add_argument(
        "--out",
        type=Path,
        help="output folder (default: the job file's `output`, else out/<name>, inside "
        "--output-root)",
    )
    job.add_argument(
        "--output-root",
        type=Path,
        help="the folder a job file's `output` lies in and may not leave (default: the working "
        "folder)",
    )
    job.add_argument("--data-dir", help="dataset root (default: $CNNZOO_DATA, else ./data)")
    job.add_argument("--check", action="store_true", help="only validate the job file, run nothing")
    job.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of another job or model in the output folder (without it, such "
        "a folder is refused); the old results are deleted once the new run has finished",
    )
    job.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _threads_argument(job)
    job.set_defaults(func=_job)


def _register_worker(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser(
        "worker",
        help="run each job file dropped into a folder once (the compose worker)",
        description="Watches --jobs for .toml/.json job files and runs each into "
        "<results>/<job name>/, recording done/failed in <results>/.status/ so a restart skips "
        "finished jobs and resumes interrupted ones; an edited job file runs again and its new "
        "results replace those of its earlier version.",
    )
    worker.add_argument("--jobs", type=Path, required=True, help="folder of job files")
    worker.add_argument("--results", type=Path, required=True, help="folder for results")
    worker.add_argument("--once", action="store_true", help="run the pending jobs and exit")
    worker.add_argument(
        "--poll-seconds", type=float, default=5.0, help="seconds between looks (default 5)"
    )
    worker.add_argument("--data-dir", help="dataset root (default: $CNNZOO_DATA, else ./data)")
    _threads_argument(worker)
    worker.set_defaults(func=_worker)

    graph_export_cli.register(sub)  # explain-export


def _threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for PyTorch's operators (default: PyTorch's, one per core; under "
        "torchrun, per process)",
    )


def _set_threads(threads: int | None) -> None:
    """Apply --threads (PyTorch's intra-op threads) before any work."""
    if threads is None:
        return
    if threads < 1:
        raise InvalidInput(f"--threads must be a positive integer, got {threads}")
    import torch  # kept out of `cnnzoo --help`

    torch.set_num_threads(threads)


def _layers(args: argparse.Namespace) -> int:
    from cnnzoo.interpret.layers import describe_layers  # torch: kept out of `cnnzoo --help`

    entry = zoo.get_entry(args.model)
    infos = describe_layers(zoo.build_model(args.model), tuple(entry.input_shape))
    rows = [("layer", "type", "output", "params", "receptive field", "O = (W-K+2P)/S+1")]
    for info in infos:
        field = info.receptive_field
        if info.calls > 1:
            rf = f"(runs {info.calls}x)"
        elif field is None:
            rf = "whole image"
        else:
            rf = f"{field.size[0]}x{field.size[1]} px, stride {field.stride[0]}"
        shape = "x".join(map(str, info.output_shape))
        rows.append((info.name, info.kind, shape, f"{info.params:,}", rf, info.formula or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"{args.model}: input {'x'.join(map(str, entry.input_shape))}")
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _explain(args: argparse.Namespace) -> int:
    # torch: kept out of `cnnzoo --help`
    import numpy as np
    import torch

    from cnnzoo.interpret.explain import explain
    from cnnzoo.interpret.render import default_scale, denormalise, explanation_figure

    if args.out.suffix.lower() != ".png":
        raise InvalidInput(f"--out {args.out}: the figure is written as PNG; name a .png file")
    if args.scale is not None and args.scale < 1:
        raise InvalidInput(f"--scale must be a positive integer, got {args.scale}")
    _set_threads(args.threads)
    image = read_image(args.image)  # decoded as the Explain RPC decodes uploads
    graph = None  # the repository's model.onnx: the quality figures' model calls run on it
    if args.repository is not None:
        repo = ModelRepository(args.repository)
        version = args.version if args.version is not None else repo.latest_version(args.model)
        manifest = repo.verify(args.model, version)
        graph = repo.version_dir(args.model, version) / "model.onnx"
        model = repo.torch_model(args.model, version, manifest=manifest)
        preprocess = repo.preprocess(args.model)
        labels = repo.labels(args.model)
    else:
        entry = zoo.get_entry(args.model)
        weights = None if args.weights == "none" else args.weights
        model = zoo.build_model(args.model, weights=weights)
        preprocess, labels = entry.preprocess, list(entry.labels)
    x = torch.from_numpy(preprocess.apply(image)).unsqueeze(0)
    if args.unit is not None:
        return _explain_unit(args, model, x, denormalise(x[0], preprocess.mean, preprocess.std))
    result = explain(model, x, args.method, target=args.target, layer=args.layer)
    label = labels[result.target] if result.target < len(labels) else str(result.target)
    summary = f"{result.method} map of class {result.target} ({label}), p={result.score:.4f}"
    height, width = result.attribution.shape
    limit = max(1, _MAX_PANEL // max(height, width))
    if args.scale is not None and args.scale > limit:
        raise InvalidInput(
            f"--scale {args.scale} is too large for a {height}x{width} image; at most {limit} "
            f"(pictures up to {_MAX_PANEL} px)"
        )
    scale = args.scale or min(limit, default_scale(height, width))
    shown = denormalise(x[0], preprocess.mean, preprocess.std)
    figure = explanation_figure(shown, torch.from_numpy(result.attribution), summary, scale)
    atomic_write_bytes(args.out, figure)
    if args.save_map is not None:
        with atomic_path(args.save_map) as tmp, open(tmp, "wb") as handle:
            np.save(handle, result.attribution)
    for warning in result.warnings:
        print(f"cnnzoo explain: warning: {warning}", file=sys.stderr)
    print(f"{args.image}: {summary} -> {args.out}")
    if args.quality:
        _print_quality(model, x, args.method, result.target, args.layer, graph)
    return 0


def _parse_unit(text: str) -> tuple[int, tuple[int, int] | None]:
    """`CHANNEL` or `CHANNEL@Y,X`."""
    channel, at, where = text.partition("@")
    try:
        position = tuple(int(v) for v in where.split(",")) if at else None
        if position is not None and len(position) != 2:
            raise ValueError
        return int(channel), position  # type: ignore[return-value]
    except ValueError:
        raise InvalidInput(f"--unit takes CHANNEL or CHANNEL@Y,X, got {text!r}") from None


def _explain_unit(args: argparse.Namespace, model: Any, x: Any, shown: Any) -> int:
    """`explain --unit`: one unit's projection beside the image."""
    import numpy as np
    import torch

    from cnnzoo.interpret.explain import project_unit
    from cnnzoo.interpret.render import (
        default_scale,
        png_bytes,
        projection_rgb,
        side_by_side,
        upscale,
    )

    if not args.layer or args.target is not None or args.quality:
        raise InvalidInput("--unit needs --layer, and takes no --target or --quality")
    if args.method not in ("deconvnet", "guided-backprop", "gradient"):
        raise InvalidInput(
            f"--unit projects by deconvnet, guided-backprop or gradient, not {args.method}"
        )
    channel, position = _parse_unit(args.unit)
    unit = project_unit(model, x, args.layer, channel, position, rule=args.method)
    height, width = unit.projection.shape[-2:]
    side = max(height, width) * (args.scale or default_scale(height, width))
    panels = [
        upscale(shown, side),
        upscale(projection_rgb(torch.from_numpy(unit.projection)), side),
    ]
    atomic_write_bytes(args.out, png_bytes(side_by_side(panels)))
    if args.save_map is not None:
        with atomic_path(args.save_map) as tmp, open(tmp, "wb") as handle:
            np.save(handle, unit.projection)
    y, x_ = unit.position
    print(
        f"layer {unit.layer} channel {unit.channel} at ({y}, {x_}): activation "
        f"{unit.activation:.6g}; {args.method} projection -> {args.out}"
    )
    return 0


def _print_quality(
    model: Any, x: Any, method: str, target: int, layer: str | None, graph: Path | None
) -> None:
    """`explain --quality`: the figures of one map beside the baselines, and what they say.
    With a repository, the faithfulness metrics run the model on its `graph` (ONNX Runtime, as
    the server does); else, and for a graph that takes uint8 pixels, on PyTorch."""
    from cnnzoo.interpret.quality.onnx_model import OnnxModel
    from cnnzoo.interpret.quality.report import reading, summarise, table_text
    from cnnzoo.interpret.torch_backend import explanation_quality

    forward = None
    if graph is not None:
        try:
            forward = OnnxModel(graph)
        except UnsupportedModel:
            forward = None
    results = explanation_quality(
        model, x, [method], targets=[target], layer=layer, forward=forward
    )
    rows = summarise(results)
    runtime = "ONNX Runtime, the repository's model.onnx" if forward is not None else "PyTorch"
    print(
        f"quality of the {method} map (class {target}) beside a random map and edges "
        f"(model calls on {runtime}):"
    )
    print(table_text(rows))
    for line in reading(rows):
        print(f"  {line}")


def _job(args: argparse.Namespace) -> int:
    # torch: kept out of `cnnzoo --help`
    from cnnzoo.interpret.jobs.runner import run_job
    from cnnzoo.interpret.jobs.spec import load_job

    _set_threads(args.threads)
    job = load_job(args.job_file, data_dir=args.data_dir)  # refuses what the run would refuse
    if args.check:
        spec = job.spec
        names = ", ".join(analysis.id for analysis in spec.analyses)
        print(f"{args.job_file}: ok ({len(spec.analyses)} analyses on {spec.model}: {names})")
        return 0
    index = run_job(
        job,
        args.out,
        output_root=args.output_root,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(index)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from cnnzoo.interpret.jobs.worker import run_worker  # torch: kept out of `cnnzoo --help`

    _set_threads(args.threads)
    failed = run_worker(
        args.jobs,
        args.results,
        once=args.once,
        poll_seconds=args.poll_seconds,
        data_dir=args.data_dir,
    )
    return 1 if args.once and failed else 0
