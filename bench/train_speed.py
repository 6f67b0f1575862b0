"""Training speed on CUDA: ResNet-20 on CIFAR-10 under each `CNNZOO_CUDA_TRAINING` setting.

Each configuration trains `resnet20-cifar10` for a few epochs (`cnnzoo train --device cuda`,
the shipped recipe, a fresh process each, so compilation and CUDA graphs start cold) and reports
the first epoch (warm-up and compilation included) and the mean of the later ones (the
"steady" epoch, what a 164-epoch run pays per epoch). The reference, measured in the same run,
is the loader path (`device_data=0,bf16=0,fused=0`: DataLoader workers, fp32, per-parameter
optimizer steps), which is how CUDA training ran before the device-resident data.

Results are written after every configuration (a run stopped at its time budget keeps what it
measured) to bench/results/gpu/train-speed_<gpu>_torch<version>.json, with `fastest`: the
setting with the shortest steady epoch, which scripts/gpu-check.sh trains the full run with.

    python bench/train_speed.py                       # the configurations below, in order
    python bench/train_speed.py --configs "bf16=0" "compile=reduce-overhead" --epochs 3
    python bench/train_speed.py --rehearse            # on the CPU: tiny subsets, two settings
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# In order of cost: what a budget cut short still compares (the default first).
CONFIGS = (
    "",  # the defaults of cnnzoo.zoo.cuda_training.CudaTraining
    "device_data=0,bf16=0,fused=0",  # the reference: the loader path
    "compile=reduce-overhead",
    "bf16=0",
    "compile=max-autotune-no-cudagraphs",
)
REFERENCE = CONFIGS[1]
MODEL = "resnet20-cifar10"


def run_config(setting: str, epochs: int, device: str, extra: list[str]) -> dict:
    """Train `epochs` epochs with `setting`; the card's per-epoch seconds and accuracy."""
    with tempfile.TemporaryDirectory(prefix="cnnzoo-train-speed-") as out:
        env = dict(os.environ, CNNZOO_CUDA_TRAINING=setting, PYTHONUNBUFFERED="1")
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "cnnzoo", "train", MODEL, "--device", device,
             "--epochs", str(epochs), "--out", out, "--no-progress", *extra],
            capture_output=True, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        wall = time.perf_counter() - started
        if result.returncode != 0:
            said = (result.stderr.strip() or result.stdout.strip()).splitlines()
            return {"setting": setting, "error": said[-1] if said else f"exit {result.returncode}"}
        card = json.loads((Path(out) / MODEL / "card.json").read_text())
    seconds = [record["seconds"] for record in card["history"]]
    later = seconds[1:] or seconds
    return {
        "setting": setting,
        "settings": card["hardware"].get("cuda_training"),
        "data_workers": card["hardware"]["data_workers"],
        "epochs": epochs,
        "epoch_seconds": seconds,
        "first_epoch_s": seconds[0],
        "steady_epoch_s": sum(later) / len(later),
        "wall_s": round(wall, 1),
        "test_top1": card["metrics"]["top1"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), help="settings to time")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per setting (>= 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    parser.add_argument(
        "--rehearse", action="store_true", help="on the CPU: 512 images, two settings"
    )
    args = parser.parse_args(argv)
    import torch

    device, extra = "cuda", []
    if args.rehearse:
        device, extra = "cpu", ["--train-subset", "512", "--test-subset", "256"]
        args.configs = args.configs[:2]
    elif not torch.cuda.is_available():
        raise SystemExit("bench/train_speed.py needs a CUDA device; --rehearse runs it on the CPU")
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"train-speed_{gpu.replace(' ', '-')}_torch{torch.__version__}"
    path = args.out / f"{name}{'_rehearsal' if args.rehearse else ''}.json"
    document: dict = {
        "conditions": {
            "device": device,
            "gpu": gpu,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "model": MODEL,
            "recipe": "the shipped recipe (batch 128), --epochs " + str(args.epochs),
        },
        "reference": REFERENCE,
        "rows": [],
        "fastest": None,
        "rehearsal": args.rehearse,
    }
    for setting in args.configs:
        print(f"timing CNNZOO_CUDA_TRAINING={setting!r} ...", file=sys.stderr, flush=True)
        measured = run_config(setting, args.epochs, device, extra)
        document["rows"].append(measured)
        timed = [r for r in document["rows"] if "steady_epoch_s" in r]
        reference = next((r for r in timed if r["setting"] == REFERENCE), None)
        for row in timed:
            row["speedup"] = (
                round(reference["steady_epoch_s"] / row["steady_epoch_s"], 2) if reference else None
            )
        if timed:
            document["fastest"] = min(timed, key=lambda r: r["steady_epoch_s"])["setting"]
        path.write_text(json.dumps(document, indent=2) + "\n")  # after each: a cut keeps it
        if "error" in measured:
            print(f"  failed: {measured['error']}", file=sys.stderr, flush=True)
        else:
            print(
                f"  first epoch {measured['first_epoch_s']:.2f} s, steady "
                f"{measured['steady_epoch_s']:.2f} s, top-1 {measured['test_top1']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    print(f"wrote {path}; fastest: {document['fastest']!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
