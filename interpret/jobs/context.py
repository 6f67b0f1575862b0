"""What an analysis sees while a job runs: the world, the output folder, this process's rank, and
resumable *parts*.

A part is a unit of work (a layer's grids, one epoch, one image). A finished part leaves a marker
in `<output>/.state/<analysis>/<part>.json` listing its files with their sha256; a part whose
marker and files check out is skipped on the next run, so a resumed job writes the same files as
an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from cnnzoo.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from cnnzoo.interpret.jobs.distributed import Ranks
from cnnzoo.interpret.jobs.world import DatasetSpec, World
from cnnzoo.interpret.render import denormalise, save_png
from cnnzoo.interpret.topk import Entry

__all__ = ["SHOW", "STATE_DIR", "TILE", "JobContext", "unit_record"]

STATE_DIR = ".state"
TILE = 48  # smallest side of a displayed patch, in pixels
SHOW = 128  # smallest side of a displayed image in overlays


@dataclass
class JobContext:
    """Everything an analysis needs while it runs.

    Attributes:
        world: the model, dataset and layers.
        data: the job's dataset table (batch size and loader workers of scans).
        out_dir: the output folder (absolute).
        ranks: this process among the job's processes.
        device: where the model runs.
        progress: show progress bars.
        timings: per analysis, seconds of its steps (written to the manifest).
    """

    world: World
    data: DatasetSpec
    out_dir: Path
    ranks: Ranks
    device: torch.device
    progress: bool = False
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.world.model

    @property
    def indices(self) -> list[int]:
        """The dataset indices the job uses."""
        return list(range(self.world.images))

    @property
    def state_dir(self) -> Path:
        return self.out_dir / STATE_DIR

    def images(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Preprocessed images `[N, C, H, W]` (on the job's device) and their labels."""
        pairs = [self.world.dataset[i] for i in indices]
        images = torch.stack([p[0] for p in pairs]).to(self.device)
        return images, [int(p[1]) for p in pairs]

    def label_name(self, label: int) -> str:
        """A dataset label as a class name (ImageFolder labels index its sorted folder names)."""
        classes = getattr(self.world.dataset, "classes", None)
        if classes is not None and 0 <= label < len(classes):
            return str(classes[label])
        return str(label)

    def display(self, image: torch.Tensor) -> torch.Tensor:
        """A preprocessed image as RGB in [0, 1]."""
        preprocess = self.world.entry.preprocess
        return denormalise(image, preprocess.mean, preprocess.std)

    # -- parts -----------------------------------------------------------------------------

    def _marker(self, analysis_id: str, key: str) -> Path:
        return self.state_dir / analysis_id / f"{key}.json"

    def finished(self, analysis_id: str, key: str) -> dict[str, Any] | None:
        """The record of a finished part, or None if it must (re)run."""
        marker = self._marker(analysis_id, key)
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
        self, analysis_id: str, keys: list[str], work: Callable[[str], dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """Run this rank's unfinished parts, wait for every rank, return all parts' records.

        `work(key)` returns {"files": [file records], "data": {...}}.
        """
        for index, key in enumerate(
            tqdm(keys, desc=analysis_id, disable=not self.progress or None, leave=False)
        ):
            if not self.ranks.mine(index) or self.finished(analysis_id, key) is not None:
                continue
            start = time.perf_counter()
            record = work(key)
            record["seconds"] = round(time.perf_counter() - start, 3)
            atomic_write_json(self._marker(analysis_id, key), record)
        self.ranks.barrier()
        records = {}
        for key in keys:
            record = self.finished(analysis_id, key)
            if record is None:
                raise RuntimeError(f"part {analysis_id}/{key} did not finish")
            records[key] = record
        return records

    def write_file(self, data: bytes, relative: str, caption: str) -> dict[str, str]:
        """Save bytes (a plot, a table) under the output folder; its file record."""
        path = self.out_dir / relative
        atomic_write_bytes(path, data)
        return {"path": relative, "sha256": sha256_file(path), "caption": caption}

    def write_png(self, picture: torch.Tensor, relative: str, caption: str) -> dict[str, str]:
        """Save a picture under the output folder; its file record for the manifest."""
        path = self.out_dir / relative
        save_png(picture, path)
        return {"path": relative, "sha256": sha256_file(path), "caption": caption}


def unit_record(entry: Entry, label: str, box: tuple[int, int, int, int]) -> dict[str, Any]:
    """A top-k entry as the manifest lists it."""
    return {
        "value": entry.value,
        "image": entry.image,
        "label": label,
        "y": entry.y,
        "x": entry.x,
        "box": list(box),
    }
