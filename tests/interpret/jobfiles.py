"""Helpers to write job files and compare job outputs in the tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"


# Every analysis kind on the 20 example digits (the gallery and manifest tests share one run).
DIGITS_JOB = f"""
name = "digits"
model = "lenet5-mnist"

[dataset]
name = "{DIGITS}"

[[analyses]]
kind = "max-activations"
layers = ["features.c3"]
channels = [0, 5, 9]

[[analyses]]
kind = "filters"

[[analyses]]
kind = "attributions"
images = [0, 7]

[[analyses]]
kind = "occlusion"
images = [3]
window = 8
stride = 4

[[analyses]]
kind = "randomisation"
images = [0, 1]
layers = ["classifier.output", "features.c5"]

[[analyses]]
kind = "evolution"
epochs = [1, 4]
channels = 3

[[analyses]]
kind = "activation-maximisation"
channels = {{"features.c3" = [0, 5, 9]}}
steps = 30
learning_rate = 0.2

[[analyses]]
kind = "explanation-quality"
images = 6
methods = ["gradient", "grad-cam"]
steps = 4
sanity_images = 2
randomise = ["classifier.output"]
"""


def write_job(folder: Path, text: str, name: str = "job.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def mnist_job(name: str, subset: int, batch_size: int, extra: str = "") -> str:
    """A LeNet-5 job over the first `subset` MNIST test images: every channel of C1 and C3."""
    return f"""
name = "{name}"
model = "lenet5-mnist"

[dataset]
name = "mnist"
subset = {subset}
batch_size = {batch_size}

[[analyses]]
kind = "max-activations"
layers = ["features.c1", "features.c3"]
channels = 16
{extra}
"""


def manifest_without_timings(folder: Path) -> dict[str, Any]:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest.pop("timings")
    return manifest


def output_files(folder: Path) -> dict[str, bytes]:
    """Every result file (not the resume state) by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".state" not in p.relative_to(folder).parts and p.name != "manifest.json"
    }


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("src", "href") and value is not None:
                self.links.append(value)


def one_and_two_rank_runs(job: Path, folder: Path, timeout: float) -> tuple[Path, Path]:
    """Run `job` under torchrun with one rank and with two, both at once (each --standalone
    has its own rendezvous port), one thread per rank so every rank does the same arithmetic;
    their output folders."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    outputs = {ranks: folder / f"ranks{ranks}" for ranks in (1, 2)}
    runs = [
        subprocess.Popen(
            [
                torchrun,
                "--standalone",
                f"--nproc-per-node={ranks}",
                "-m",
                "cnnzoo",
                "job",
                str(job),
                "--out",
                str(out),
                "--no-progress",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        for ranks, out in outputs.items()
    ]
    for run in runs:
        _, errors = run.communicate(timeout=timeout)
        assert run.returncode == 0, errors[-3000:]
    return outputs[1], outputs[2]


def html_links(path: Path) -> list[str]:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.links
