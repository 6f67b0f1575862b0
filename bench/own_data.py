"""Bring-your-own-data benchmarks: MNIST and CIFAR-10 written as image folders of PNG files.

Two parts (`--part`):

`parity` (the default): MNIST's 70,000 digits as PNGs in ImageFolder layout, trained with
LeNet-5's full recipe twice with the same seed, once from the named dataset (`cnnzoo train lenet5
--dataset mnist`) and once from the folder (`cnnzoo train lenet5 --dataset <png folder>`). Both
derive the same preprocessing, so their test top-1 should agree to a few tenths of a point.
Writes `results/own_data_<device>-<cores>cores_torch<version>.json`.

`defaults`: what a user gets from `cnnzoo train ARCH --dataset FOLDER` with nothing but a fixed
epoch budget (augmentation chosen from the images, `--lr auto`, one-cycle, best epoch kept), on
a stratified subset of MNIST (LeNet-5) and of CIFAR-10 (ResNet-20) written as PNGs, against

- a plain, hand-tuned loop: the same network, the same images, the datasets' usual mean/std,
  Adam at a constant rate, no augmentation, the same epochs and batch 128; three rates are
  tried (3e-4, 1e-3, 3e-3) and the best test top-1 of the three is its figure (tuned on the
  test split: generous to it);
- the named-dataset preset (`cnnzoo train lenet5-mnist` / `resnet20-cifar10`) with the same
  epoch budget on the same images (`--train-subset` and `--test-subset` draw exactly the images
  the folders hold: the same stratified draw, seed 0).

Every run is a separate process with one torch thread; `--jobs` run at once. CPU seconds are the
process's user + system time (what the run cost, whatever else the machine did). Writes
`results/own_data_defaults_<device>-<cores>cores_torch<version>.json` and prints a markdown
table, the commands, and what `--lr auto` picked on each folder.

    python bench/own_data.py --work /tmp/own-data [--threads 1] [--epochs N] [--parallel]
    python bench/own_data.py --work /tmp/own-data --part defaults [--jobs 2] [--train-images N]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The datasets' usual statistics (what a plain loop copies from a tutorial).
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
PLAIN_RATES = (3e-4, 1e-3, 3e-3)


# -- writing the folders ----------------------------------------------------------------------


def write_png_folder(
    data_dir: Path | None,
    folder: Path,
    name: str = "mnist",
    train_images: int | None = None,
    test_images: int | None = None,
) -> int:
    """`name`'s images as `folder/{train,test}/<class>/<index>.png` (kept if complete): all of
    them, or a stratified draw (seed 0, as `--train-subset`/`--test-subset` draw them)."""
    from PIL import Image

    from cnnzoo.zoo.datasets import get_dataset
    from cnnzoo.zoo.subsets import stratified_indices

    marker = folder / ".complete"
    if marker.is_file():
        return int(marker.read_text())
    count = 0
    for split, wanted in (("train", train_images), ("test", test_images)):
        data = get_dataset(name, split, data_dir=data_dir)
        pixels = data.data.numpy() if hasattr(data.data, "numpy") else data.data
        targets = list(map(int, data.targets))
        chosen = range(len(targets)) if wanted is None else stratified_indices(targets, wanted, 0)
        classes = [str(d) for d in range(10)] if name == "mnist" else list(data.classes)
        for index in chosen:
            target = folder / split / classes[targets[index]] / f"{index:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index]).save(target)
            count += 1
    marker.write_text(str(count))
    return count


# -- the plain loop ---------------------------------------------------------------------------


def plain_loop(folder: Path, arch: str, dataset: str, lr: float, epochs: int, out: Path) -> None:
    """Train `arch` on `folder` the plain way (see the module docstring); writes JSON to `out`."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from cnnzoo.zoo.architectures import get_architecture

    torch.set_num_threads(1)
    torch.manual_seed(0)
    grey = dataset == "mnist"
    steps: list[Any] = [transforms.Grayscale()] if grey else []
    if arch == "lenet5":
        steps.append(transforms.Pad(2))  # LeNet-5 takes 32x32: the digit padded, as usual
    mean, std = STATS[dataset]
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])
    train = datasets.ImageFolder(str(folder / "train"), transform=transform)
    test = datasets.ImageFolder(str(folder / "test"), transform=transform)
    model = get_architecture(arch).build(len(train.classes), 1 if grey else 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(train, batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for images, labels in DataLoader(test, batch_size=256):
            correct += int((model(images).argmax(1) == labels).sum())
    result = {"top1": correct / len(test), "n_test": len(test), "n_train": len(train),
              "train_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    out.write_text(json.dumps(result))


# -- running processes ------------------------------------------------------------------------


def run_all(commands: dict[str, list[str]], logs: Path, jobs: int) -> dict[str, dict[str, float]]:
    """Run the commands, `jobs` at a time; per label its wall and CPU seconds.

    Raises:
        SystemExit: a command failed (its log is named).
    """
    pending = list(commands.items())
    running: dict[int, tuple[str, float]] = {}
    measured: dict[str, dict[str, float]] = {}
    logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < jobs:
            label, command = pending.pop(0)
            with open(logs / f"{_slug(label)}.log", "w") as log:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            running[process.pid] = (label, time.perf_counter())
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        label, begun = running.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{label}: failed, see {logs / (_slug(label) + '.log')}")
        measured[label] = {
            "wall_seconds": round(time.perf_counter() - begun, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        }
        print(f"  done: {label} ({measured[label]['cpu_seconds']:.0f} CPU s)", flush=True)
    return measured


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")


def _cnnzoo(*args: str, threads: int = 1) -> list[str]:
    return [sys.executable, "-m", "cnnzoo", *args, "--threads", str(threads), "--no-progress"]


# -- part: parity -----------------------------------------------------------------------------


def parity(args: argparse.Namespace) -> int:
    import torch

    folder = args.work / "mnist-png"
    started = time.perf_counter()
    images = write_png_folder(args.data_dir, folder)
    write_seconds = time.perf_counter() - started
    out = args.work / "runs"
    runs = {"named dataset (mnist)": ("mnist", "lenet5-mnist-named"),
            "image folder of PNGs": (str(folder), "lenet5-mnist-png")}  # fmt: skip
    commands = {}
    for label, (dataset, name) in runs.items():
        # LeNet-5's recipe for both (a folder's own defaults are the other part's subject)
        command = _cnnzoo("train", "lenet5", "--dataset", dataset, "--name", name, "--out",
                          str(out), "--lr", "0.05", "--augment", "mnist-affine",
                          threads=args.threads)  # fmt: skip
        if args.epochs is not None:
            command += ["--epochs", str(args.epochs)]
        if args.data_dir is not None:
            command += ["--data-dir", str(args.data_dir)]
        commands[label] = command
    walls = run_all(commands, args.work / "logs", 2 if args.parallel else 1)
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
                "wall_seconds": walls[label]["wall_seconds"],
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
    _write_results(
        "own_data",
        torch,
        {"rows": rows, "difference_points": round(difference, 3), "png_files": images,
         "write_seconds": round(write_seconds, 1), "threads": args.threads,
         "parallel": args.parallel},
    )  # fmt: skip
    return 0


# -- part: defaults ---------------------------------------------------------------------------

# dataset -> (architecture, preset, test images written (None: all of them))
_FOLDERS = {
    "mnist": ("lenet5", "lenet5-mnist", None),
    "cifar10": ("resnet20", "resnet20-cifar10", 2000),
}


def defaults(args: argparse.Namespace) -> int:
    import torch

    commands: dict[str, list[str]] = {}
    plan: dict[str, dict[str, Any]] = {}
    for dataset, (arch, preset, test_images) in _FOLDERS.items():
        epochs = args.epochs or (8 if dataset == "mnist" else 10)
        folder = args.work / f"{dataset}-png-{args.train_images}"
        images = write_png_folder(args.data_dir, folder, dataset, args.train_images, test_images)
        out = args.work / "runs-defaults"
        ours = f"{dataset}: cnnzoo defaults"
        commands[ours] = _cnnzoo("train", arch, "--dataset", str(folder), "--epochs",
                                 str(epochs), "--name", f"{arch}-{dataset}-folder", "--out",
                                 str(out))  # fmt: skip
        named = f"{dataset}: preset {preset}"
        commands[named] = _cnnzoo("train", preset, "--epochs", str(epochs), "--train-subset",
                                  str(args.train_images), "--out", str(out))  # fmt: skip
        if test_images is not None:
            commands[named] += ["--test-subset", str(test_images)]
        if args.data_dir is not None:
            commands[named] += ["--data-dir", str(args.data_dir)]
        plain = {}
        for rate in PLAIN_RATES:
            label = f"{dataset}: plain Adam {rate:g}"
            result = args.work / "plain" / f"{_slug(label)}.json"
            result.parent.mkdir(parents=True, exist_ok=True)
            commands[label] = [sys.executable, str(Path(__file__).resolve()), "--work",
                               str(args.work), "--part", "plain", "--folder", str(folder),
                               "--arch", arch, "--dataset", dataset, "--lr", str(rate),
                               "--epochs", str(epochs), "--result", str(result)]  # fmt: skip
            plain[label] = result
        plan[dataset] = {"arch": arch, "preset": preset, "epochs": epochs, "images": images,
                         "ours": (ours, out / f"{arch}-{dataset}-folder"),
                         "named": (named, out / preset), "plain": plain}  # fmt: skip
    measured = run_all(commands, args.work / "logs", args.jobs)
    report = {dataset: _defaults_rows(info, measured) for dataset, info in plan.items()}
    _print_defaults(report, commands)
    _write_results(
        "own_data_defaults",
        torch,
        {"train_images": args.train_images, "jobs": args.jobs, "datasets": report,
         "commands": {label: shlex.join(c) for label, c in commands.items()}},
    )  # fmt: skip
    return 0


def _defaults_rows(info: dict[str, Any], measured: dict[str, dict[str, float]]) -> dict[str, Any]:
    rows = []
    for key in ("ours", "named"):
        label, run = info[key]
        card = json.loads((run / "card.json").read_text())
        chosen = card.get("chosen", {})
        rows.append(
            {
                "run": label,
                "top1": card["metrics"]["top1"],
                "best_top1": card.get("selection", {}).get("best_top1"),
                "n_train": card["dataset"]["n_train"],
                "n_test": card["metrics"]["n"],
                "lr": card["recipe"]["lr"],
                "lr_auto": "lr" in chosen,
                "augment": card["recipe"]["augment"],
                "batch_size": card["recipe"]["batch_size"],
                **measured[label],
            }
        )
    plain = []
    for label, result in info["plain"].items():
        figures = json.loads(result.read_text())
        plain.append({"run": label, "top1": figures["top1"], "n_train": figures["n_train"],
                      "n_test": figures["n_test"], "augment": "none", "batch_size": 128,
                      "lr": float(label.rsplit(" ", 1)[1]), **measured[label]})  # fmt: skip
    best_plain = max(plain, key=lambda row: row["top1"])
    return {
        "arch": info["arch"], "epochs": info["epochs"], "png_files": info["images"],
        "rows": rows, "plain": plain, "best_plain": best_plain["run"],
        "target_met": rows[0]["top1"] >= best_plain["top1"],
    }  # fmt: skip


def _print_defaults(report: dict[str, Any], commands: dict[str, list[str]]) -> None:
    print("\n| folder | run | test top-1 | lr | augmentation | CPU s | wall s |")
    print("|---|---|---:|---|---|---:|---:|")
    for dataset, info in report.items():
        for row in [*info["rows"], *info["plain"]]:
            lr = f"{row['lr']:g}" + (" (auto)" if row.get("lr_auto") else "")
            best = " (best of 3)" if row["run"] == info["best_plain"] else ""
            print(
                f"| {dataset} ({info['arch']}, {info['epochs']} epochs) | {row['run']}{best} | "
                f"{100 * row['top1']:.2f} % | {lr} | {row['augment']} | "
                f"{row['cpu_seconds']:.0f} | {row['wall_seconds']:.0f} |"
            )
    print()
    for dataset, info in report.items():
        ours = info["rows"][0]
        print(
            f"{dataset}: --lr auto picked {ours['lr']:g}; defaults {100 * ours['top1']:.2f} % "
            f"against the best plain loop's "
            f"{100 * max(r['top1'] for r in info['plain']):.2f} %: target "
            f"{'met' if info['target_met'] else 'missed'}"
        )
    print("\ncommands:")
    for label, command in commands.items():
        print(f"  {label}: {shlex.join(command)}")


def _write_results(stem: str, torch: Any, payload: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    version = torch.__version__.split("+")[0]
    path = RESULTS / f"{stem}_{device}-{os.cpu_count()}cores_torch{version}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the PNGs and runs")
    parser.add_argument("--part", choices=("parity", "defaults", "plain"), default="parity")
    parser.add_argument("--data-dir", type=Path, help="data folder (default $CNNZOO_DATA)")
    parser.add_argument("--threads", type=int, default=1, help="parity: torch threads per run")
    parser.add_argument("--epochs", type=int, help="epochs (parity: LeNet-5's 20; defaults: "
                        "8 for MNIST, 10 for CIFAR-10)")  # fmt: skip
    parser.add_argument("--parallel", action="store_true", help="parity: both runs at once")
    parser.add_argument("--jobs", type=int, default=2, help="defaults: processes at once")
    parser.add_argument("--train-images", type=int, default=10_000,
                        help="defaults: training images per folder (stratified)")  # fmt: skip
    # the plain loop, as `--part defaults` runs it
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "plain":
        plain_loop(args.folder, args.arch, args.dataset, args.lr, args.epochs, args.result)
        return 0
    return parity(args) if args.part == "parity" else defaults(args)


if __name__ == "__main__":
    raise SystemExit(main())
