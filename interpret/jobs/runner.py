"""Run a loaded job: claim the output folder, run each analysis, write the manifest and the
gallery.

Resuming: work is split into *parts* (see `cnnzoo.interpret.jobs.context`); a part whose marker
and files check out is skipped on the next run. The dataset scan checkpoints
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

import errno
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from cnnzoo.errors import (
    AlreadyExists,
    CnnzooError,
    InvalidInput,
    JobFileError,
    ResourceExhausted,
)
from cnnzoo.fileio import atomic_write_json, sha256_bytes, sha256_file
from cnnzoo.interpret.jobs import gallery
from cnnzoo.interpret.jobs.context import STATE_DIR, JobContext
from cnnzoo.interpret.jobs.distributed import Ranks, join
from cnnzoo.interpret.jobs.site import INDEX
from cnnzoo.interpret.jobs.spec import Job, JobSpec

__all__ = ["output_folder", "output_owner", "replaced_path", "run_job"]

MANIFEST = "manifest.json"


def state_sha256(model: nn.Module) -> str:
    """sha256 of the model's weights serialised as safetensors (whatever file they came from)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return sha256_bytes(save(state))


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
        if problem is None:
            _remove_stale_temporaries(out)
    problem = ctx.ranks.broadcast(problem)
    if problem:
        raise AlreadyExists(problem)


# The hidden temporary files of `cnnzoo.fileio.atomic_path`: `.<name>.<8 hex digits>.tmp`.
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def _remove_stale_temporaries(out: Path) -> None:
    """Delete what a killed run left half-written (atomic writes' temporary files; every
    finished file was renamed into place, so none of these is a result)."""
    for path in out.rglob(".*.tmp"):
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)


# Write failures that mean the disk (or the process's file-size limit) is full.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _output_error(err: OSError, out: Path) -> CnnzooError | None:
    """One clear error for a failure to write the output folder `out` (absolute); None when the
    failure is about something else (it then propagates as it is)."""
    names = [Path(name) for name in (err.filename, err.filename2) if name]
    about = names[0] if names else out
    if err.errno in _FULL:
        return ResourceExhausted(
            f"cannot write {about}: {err.strerror} (the disk or the file-size limit is full); "
            "free some space or choose another output folder: finished parts are kept, so "
            "running the job again resumes it"
        )
    if any(path.resolve().is_relative_to(out.parent) for path in names):
        return InvalidInput(
            f"cannot write the output folder {out}: {err.strerror} ({about}); choose another "
            "one with --out"
        )
    return None


def output_folder(
    spec: JobSpec, out_dir: str | Path | None = None, output_root: str | Path | None = None
) -> Path:
    """Where a run writes: `out_dir` when the caller names one; otherwise the job file's
    `output` (or `out/<name>`) inside `output_root` (default: the working folder), which it may
    not leave, not even through a symbolic link.

    Raises:
        JobFileError: the job's output leads outside the output root.
    """
    if out_dir is not None:
        return Path(out_dir)
    root = Path(output_root) if output_root is not None else Path.cwd()
    relative = spec.output if spec.output is not None else Path("out") / spec.name
    out = root / relative
    if not out.resolve().is_relative_to(root.resolve()):
        raise JobFileError(
            f"{spec.source.name}: output {str(relative)!r} leads outside the output root "
            f"{root} (through a symbolic link); job outputs stay inside it"
        )
    return out


def _device(requested: str, ranks: Ranks) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InvalidInput("device cuda requested but no CUDA device is available")
    return torch.device("cuda", ranks.local_rank)


def _finish(ctx: JobContext, job: Job, model_sha: str, sections: list[dict[str, Any]]) -> None:
    """Write the manifest and the gallery, then delete the results this run replaced."""
    spec, world = job.spec, job.world
    weights_file = world.weights_file
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
            "images": world.images,
        },
        "analyses": sections,
        "timings": ctx.timings,
    }
    atomic_write_json(ctx.out_dir / MANIFEST, manifest)
    gallery.write_gallery(ctx.out_dir, manifest)
    aside = replaced_path(ctx.out_dir)
    if aside.exists():  # the results this run replaced
        shutil.rmtree(aside)


def run_job(
    job: Job,
    out_dir: str | Path | None = None,
    *,
    output_root: str | Path | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Run a loaded job (see `cnnzoo.interpret.jobs.spec.load_job`); returns the gallery's path.

    Args:
        job: the job, resolved against its opened world.
        out_dir: where results go (default: see `output_folder`).
        output_root: the folder a job file's `output` (or `out/<name>`) lies in (default: the
            working folder).
        progress: show progress bars.
        overwrite: replace the results of another job or model in `out_dir` (see the module
            docstring); without it such a folder raises `AlreadyExists`.

    Raises:
        AlreadyExists: the folder holds another job's results (without `overwrite`), or is not
            a job folder.
        ResourceExhausted: the disk (or the file-size limit) filled up while writing.
        InvalidInput: the output folder cannot be written (permissions, a file in its place).
        JobFileError: the job's output leads outside the output root.
    """
    spec, world = job.spec, job.world
    out = output_folder(spec, out_dir, output_root).resolve()
    device_name = (
        spec.device if spec.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    ranks = join(device_name)
    try:
        started = time.perf_counter()
        device = _device(spec.device, ranks)
        world.model.to(device).eval()
        ctx = JobContext(
            world=world,
            data=spec.dataset,
            out_dir=out,
            ranks=ranks,
            device=device,
            progress=progress,
        )
        model_sha = state_sha256(world.model)
        _claim_output(ctx, _fingerprint(spec, model_sha, world.images), overwrite)
        sections = []
        for analysis in spec.analyses:
            start = time.perf_counter()
            sections.append(analysis.run(ctx))
            ctx.timings.setdefault(analysis.id, {})["seconds"] = round(
                time.perf_counter() - start, 3
            )
        index = ctx.out_dir / INDEX
        if ranks.is_main:
            ctx.timings["total_seconds"] = round(time.perf_counter() - started, 3)
            ctx.timings["ranks"] = ranks.world
            _finish(ctx, job, model_sha, sections)
        ranks.barrier()
        return index
    except OSError as err:
        clear = _output_error(err, out)
        if clear is None:
            raise
        raise clear from None
    finally:
        ranks.leave()
