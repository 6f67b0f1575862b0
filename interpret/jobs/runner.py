"""Run a checked job: build the model, open the data, run each analysis, write the manifest and
the gallery.

Resuming: work is split into *parts* (a layer's grids, one epoch, one image). A finished part
leaves a marker in `<output>/.state/<analysis>/<part>.json` listing its files with their sha256;
a part whose marker and files check out is skipped on the next run. The dataset scan checkpoints
its partial top-k tables every tenth of its batches. Everything in the manifest except
`timings` comes from the markers, so a resumed run writes the same manifest and the same PNGs as
an uninterrupted one.

Replacing: an output folder is claimed by `.state/job.json`, which records the job's fingerprint
(the job's options and the model's weights) and its job file. A run whose fingerprint differs
from the folder's refuses to mix its files with the other job's, unless asked to `overwrite`:
then the previous results move aside to a hidden `.<folder>.replaced` beside the folder, the new
job runs into the emptied folder, and the old results are deleted once it has finished. An
interrupted replacement resumes like any run; the folder never holds files of both jobs.

Sharding: under `torchrun` every rank scans its share of the batches (batch b goes to rank
b mod N), the partial tables are gathered and merged, then rank r renders parts r, r+N, ...;
rank 0 writes the manifest and the gallery.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzoo.errors import AlreadyExists
from cnnzoo.fileio import atomic_write_json, sha256_bytes, sha256_file
from cnnzoo.interpret.jobs.distributed import Ranks, join
from cnnzoo.interpret.jobs.spec import AnalysisSpec, JobSpec
from cnnzoo.interpret.layers import LayerInfo, describe_layers

__all__ = ["JobContext", "output_owner", "replaced_path", "run_job"]

STATE_DIR = ".state"
MANIFEST = "manifest.json"
INDEX = "index.html"


def state_sha256(model: nn.Module) -> str:
    """sha256 of the model's weights serialised as safetensors (whatever file they came from)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return sha256_bytes(save(state))


@dataclass
class JobContext:
    """Everything an analysis needs."""

    spec: JobSpec
    entry: Any
    model: nn.Module
    dataset: Any
    indices: list[int]
    out_dir: Path
    ranks: Ranks
    device: torch.device
    layers: dict[str, LayerInfo]
    progress: bool = False
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.out_dir / STATE_DIR

    def images(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Preprocessed images `[N, C, H, W]` (on the job's device) and their labels."""
        pairs = [self.dataset[i] for i in indices]
        images = torch.stack([p[0] for p in pairs]).to(self.device)
        return images, [int(p[1]) for p in pairs]

    def label_name(self, label: int) -> str:
        """A dataset label as a class name (ImageFolder labels index its sorted folder names)."""
        classes = getattr(self.dataset, "classes", None)
        if classes is not None and 0 <= label < len(classes):
            return str(classes[label])
        return str(label)

    def display(self, image: torch.Tensor) -> torch.Tensor:
        """A preprocessed image as RGB in [0, 1]."""
        from cnnzoo.interpret.render import denormalise

        return denormalise(image, self.entry.preprocess.mean, self.entry.preprocess.std)

    # -- parts -----------------------------------------------------------------------------

    def _marker(self, analysis: AnalysisSpec, key: str) -> Path:
        return self.state_dir / analysis.id / f"{key}.json"

    def finished(self, analysis: AnalysisSpec, key: str) -> dict[str, Any] | None:
        """The record of a finished part, or None if it must (re)run."""
        marker = self._marker(analysis, key)
        if not marker.is_file():
            return None
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        for item in record.get("files", []):
            path = self.out_dir / item["path"]
            if not path.is_file() or sha256_file(path) != item["sha256"]:
                return None
        return record

    def run_parts(
        self,
        analysis: AnalysisSpec,
        keys: list[str],
        work: Callable[[str], dict[str, Any]],
    ) -> dict[str, dict[str, Any]]:
        """Run this rank's unfinished parts, wait for every rank, return all parts' records.

        `work(key)` returns {"files": [file records], "data": {...}}.
        """
        from tqdm import tqdm

        for index, key in enumerate(
            tqdm(keys, desc=analysis.id, disable=not self.progress or None, leave=False)
        ):
            if not self.ranks.mine(index) or self.finished(analysis, key) is not None:
                continue
            start = time.perf_counter()
            record = work(key)
            record["seconds"] = round(time.perf_counter() - start, 3)
            atomic_write_json(self._marker(analysis, key), record)
        self.ranks.barrier()
        records = {}
        for key in keys:
            record = self.finished(analysis, key)
            if record is None:
                raise RuntimeError(f"part {analysis.id}/{key} did not finish")
            records[key] = record
        return records

    def write_png(self, picture: torch.Tensor, relative: str, caption: str) -> dict[str, str]:
        """Save a picture under the output folder; its file record for the manifest."""
        from cnnzoo.interpret.render import save_png

        path = self.out_dir / relative
        save_png(picture, path)
        return {"path": relative, "sha256": sha256_file(path), "caption": caption}


def _fingerprint(spec: JobSpec, model_sha: str, images: int) -> dict[str, Any]:
    job = spec.to_dict()
    job["dataset"]["images"] = images
    digest = sha256_bytes(json.dumps({"job": job, "model": model_sha}, sort_keys=True).encode())
    return {"job": spec.name, "fingerprint": digest, "source": str(spec.source)}


def output_owner(out_dir: str | Path) -> dict[str, Any] | None:
    """The claim of a job output folder: {"job": name, "fingerprint", "source": job file}, `{}`
    when the claim is unreadable, None when the folder holds no job's results."""
    marker = Path(out_dir) / STATE_DIR / "job.json"
    if not marker.is_file():
        return None
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def replaced_path(out_dir: Path) -> Path:
    """Where an output folder's previous results wait while `overwrite` replaces them."""
    return out_dir.parent / f".{out_dir.name}.replaced"


def _claim_output(ctx: JobContext, fingerprint: dict[str, Any], overwrite: bool) -> None:
    """Make sure the output folder is new or holds this very job (with `overwrite`: move another
    job's results aside); every rank learns the verdict."""
    problem = None
    if ctx.ranks.is_main:
        out = ctx.out_dir
        found = output_owner(out)
        if found is not None and found.get("fingerprint") == fingerprint["fingerprint"]:
            pass  # this job: resume
        elif found is not None and not overwrite:
            problem = (
                f"{out} holds results of another job or model ({found.get('job')!r}); "
                "rerun with --overwrite to replace them, or choose another output folder"
            )
        elif found is None and out.exists() and any(out.iterdir()):
            problem = (
                f"{out} exists and is not a job folder (no {STATE_DIR}/job.json), so it is "
                "never replaced, not even with --overwrite; choose another output folder"
            )
        else:
            if found is not None:  # overwrite: another job's results go aside until we finish
                aside = replaced_path(out)
                if aside.exists():  # from an earlier replacement that was interrupted
                    shutil.rmtree(aside)
                os.replace(out, aside)
            atomic_write_json(out / STATE_DIR / "job.json", fingerprint)
    problem = ctx.ranks.broadcast(problem)
    if problem:
        raise AlreadyExists(problem)


def _device(requested: str, ranks: Ranks) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from cnnzoo.errors import InvalidInput

        raise InvalidInput("device cuda requested but no CUDA device is available")
    return torch.device("cuda", ranks.local_rank)


def run_job(
    spec: JobSpec,
    out_dir: str | Path | None = None,
    *,
    data_dir: str | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Run a validated job (see `cnnzoo.interpret.jobs.spec.load_job`); returns the gallery's path.

    Args:
        spec: the job.
        out_dir: where results go (default: the job's `output`, else `./out/<name>`).
        data_dir: the dataset root (default `$CNNZOO_DATA`, else `./data`).
        progress: show progress bars.
        overwrite: replace the results of another job or model in `out_dir` (see the module
            docstring); without it such a folder raises `AlreadyExists`.
    """
    from cnnzoo import zoo
    from cnnzoo.interpret.jobs import analyses, gallery
    from cnnzoo.zoo.datasets import get_dataset

    out = Path(out_dir) if out_dir is not None else (spec.output or Path("out") / spec.name)
    device_name = (
        spec.device if spec.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    ranks = join(device_name)
    try:
        started = time.perf_counter()
        device = _device(spec.device, ranks)
        entry = zoo.get_entry(spec.model)
        weights_file = spec.weights_file(entry)
        weights = None if weights_file is None else str(weights_file)
        model = zoo.build_model(spec.model, weights=weights).to(device).eval()
        dataset_name = spec.dataset.name
        if dataset_name not in ("mnist", "cifar10", "imagenet"):
            dataset_name = str(spec.resolve(dataset_name))
        dataset = get_dataset(
            dataset_name,
            spec.dataset.split,
            data_dir=data_dir,
            transform=entry.preprocess.torch_transform(),
        )
        count = (
            len(dataset) if spec.dataset.subset is None else min(spec.dataset.subset, len(dataset))
        )
        layers = {info.name: info for info in describe_layers(model, tuple(entry.input_shape))}
        ctx = JobContext(
            spec=spec,
            entry=entry,
            model=model,
            dataset=dataset,
            indices=list(range(count)),
            out_dir=out.resolve(),
            ranks=ranks,
            device=device,
            layers=layers,
            progress=progress,
        )
        model_sha = state_sha256(model)
        _claim_output(ctx, _fingerprint(spec, model_sha, count), overwrite)
        sections = []
        for analysis in spec.analyses:
            start = time.perf_counter()
            sections.append(analyses.RUNNERS[analysis.kind](ctx, analysis))
            ctx.timings.setdefault(analysis.id, {})["seconds"] = round(
                time.perf_counter() - start, 3
            )
        index = ctx.out_dir / INDEX
        if ranks.is_main:
            ctx.timings["total_seconds"] = round(time.perf_counter() - started, 3)
            ctx.timings["ranks"] = ranks.world
            manifest = {
                "job": spec.to_dict(),
                "model": {
                    "name": spec.model,
                    "weights": spec.weights,
                    "weights_sha256": sha256_file(weights_file) if weights_file else None,
                    "state_sha256": model_sha,
                },
                "dataset": {
                    "name": spec.dataset.name,
                    "split": spec.dataset.split,
                    "images": count,
                },
                "analyses": sections,
                "timings": ctx.timings,
            }
            atomic_write_json(ctx.out_dir / MANIFEST, manifest)
            gallery.write_index(ctx.out_dir, manifest)
            aside = replaced_path(ctx.out_dir)
            if aside.exists():  # the results this run replaced
                shutil.rmtree(aside)
        ranks.barrier()
        return index
    finally:
        ranks.leave()
