"""Bring-your-own-data parity: MNIST as an image folder of PNGs against the named dataset.

Writes MNIST's 70,000 digits as PNG files in ImageFolder layout (`train/<digit>/`,
`test/<digit>/`), then trains LeNet-5 with its full recipe twice, with the same seed:

- reference: `cnnzoo train lenet5 --dataset mnist` (torchvision's MNIST reader);
- image folder: `cnnzoo train lenet5 --dataset <png folder>` (classes, colour mode, input size
  and normalisation derived from the files).

Both derive the same preprocessing (28x28 padded by 2 to 32x32, mean/std measured on the
training digits), so their test top-1 should agree to a few tenths of a point; the wall times
show what decoding PNG files costs against reading the IDX arrays. Prints a markdown table and
writes `results/own_data_<device>-<cores>cores_torch<version>.json`.

    python bench/own_data.py --work /tmp/own-data [--threads 1] [--epochs N] [--parallel]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def write_png_folder(data_dir: Path | None, folder: Path) -> int:
    """MNIST train and test digits as `folder/{train,test}/<digit>/<index>.png` (kept if there)."""
    from PIL import Image

    from cnnzoo.zoo.datasets import get_dataset

    marker = folder / ".complete"
    if marker.is_file():
        return int(marker.read_text())
    count = 0
    for split in ("train", "test"):
        data = get_dataset("mnist", split, data_dir=data_dir)
        labels = data.targets.tolist()
        for index, (pixels, label) in enumerate(zip(data.data.numpy(), labels, strict=True)):
            target = folder / split / str(label) / f"{index:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(target)
            count += 1
    marker.write_text(str(count))
    return count


def train_command(dataset: str, name: str, out: Path, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "cnnzoo", "train", "lenet5", "--dataset", dataset,
               "--name", name, "--out", str(out), "--threads", str(args.threads),
               "--no-progress"]  # fmt: skip
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    if args.data_dir is not None:
        command += ["--data-dir", str(args.data_dir)]
    return command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the PNGs and runs")
    parser.add_argument("--data-dir", type=Path, help="data folder (default $CNNZOO_DATA)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--epochs", type=int, help="epochs (default: LeNet-5's recipe, 20)")
    parser.add_argument(
        "--parallel", action="store_true", help="train both at once (one core each)"
    )
    args = parser.parse_args()

    import torch

    folder = args.work / "mnist-png"
    started = time.perf_counter()
    images = write_png_folder(args.data_dir, folder)
    write_seconds = time.perf_counter() - started
    out = args.work / "runs"
    runs = {"named dataset (mnist)": ("mnist", "lenet5-mnist-named"),
            "image folder of PNGs": (str(folder), "lenet5-mnist-png")}  # fmt: skip
    started_at: dict[str, tuple[subprocess.Popen, float]] = {}
    walls: dict[str, float] = {}

    def finish(label: str) -> None:
        process, begun = started_at[label]
        if process.wait() != 0:
            raise SystemExit(f"{label}: training failed, see {args.work}/{runs[label][1]}.log")
        walls[label] = time.perf_counter() - begun

    for label, (dataset, name) in runs.items():
        with open(args.work / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                train_command(dataset, name, out, args), stdout=log, stderr=subprocess.STDOUT
            )
        started_at[label] = (process, time.perf_counter())
        if not args.parallel:
            finish(label)
    for label in runs:
        if label not in walls:
            finish(label)

    rows = []
    for label in runs:
        card = json.loads((out / runs[label][1] / "card.json").read_text())
        rows.append(
            {
                "path": label,
                "top1": card["metrics"]["top1"],
                "n_test": card["metrics"]["n"],
                "epochs": card["epochs"],
                "train_seconds": card["wall_time_seconds"],
                "wall_seconds": round(walls[label], 1),
                "mean": card["preprocess"]["mean"],
                "std": card["preprocess"]["std"],
                "pad": card["preprocess"]["pad"],
            }
        )
    difference = 100 * (rows[1]["top1"] - rows[0]["top1"])
    print(f"MNIST written as {images} PNG files in {write_seconds:.0f} s\n")
    print(
        "| path | test top-1 | epochs | training s | wall s (incl. reading the data) | mean / std |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        print(
            f"| {row['path']} | {100 * row['top1']:.2f} % | {row['epochs']} | "
            f"{row['train_seconds']:.0f} | {row['wall_seconds']:.0f} | "
            f"{row['mean'][0]} / {row['std'][0]} |"
        )
    print(f"\nimage folder - named dataset: {difference:+.2f} points (goal: within 0.3)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = (
        RESULTS
        / f"own_data_{device}-{os.cpu_count()}cores_torch{torch.__version__.split('+')[0]}.json"
    )
    path.write_text(
        json.dumps(
            {
                "rows": rows,
                "difference_points": round(difference, 3),
                "png_files": images,
                "write_seconds": round(write_seconds, 1),
                "threads": args.threads,
                "parallel": args.parallel,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
