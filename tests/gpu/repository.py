"""The model repositories the GPU tests and the GPU benchmark serve: fp32 and fp16.

`python -m tests.gpu.repository ROOT` writes `ROOT/fp32` and `ROOT/fp16`, each with
lenet5-mnist, resnet20-cifar10 and resnet50-imagenet (untrained: the zoo ships no ImageNet
weights), exporting the six in parallel processes (each export is CPU work: tracing, the
parity check). A repository already complete is kept. scripts/gpu-check.sh builds them once
and points the tests (`CNNZOO_GPU_REPOSITORY`) and the benchmark at them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("lenet5-mnist", "resnet20-cifar10", "resnet50-imagenet")
PRECISIONS = ("fp32", "fp16")
ENVIRONMENT_VARIABLE = "CNNZOO_GPU_REPOSITORY"


def complete(root: Path, models: tuple[str, ...] = MODELS) -> bool:
    return all(
        (root / precision / model / "1" / "manifest.json").is_file()
        for precision in PRECISIONS
        for model in models
    )


def build(root: Path, models: tuple[str, ...] = MODELS) -> dict[str, Path]:
    """`{precision: repository}` under `root`, exporting what is missing (in parallel).

    Raises:
        RuntimeError: an export failed (its output is in the message).
    """
    jobs = []
    for precision in PRECISIONS:
        repository = root / precision
        for model in models:
            if (repository / model / "1" / "manifest.json").is_file():
                continue
            command = [sys.executable, "-m", "cnnzoo", "export", model]
            command += ["--repository", str(repository)]
            command += ["--fp16"] if precision == "fp16" else []
            # each export alone on a few threads: six at once on the machine's cores
            threads = str(max(1, (os.cpu_count() or 2) // len(PRECISIONS) // len(models)))
            env = dict(os.environ, OMP_NUM_THREADS=threads)
            jobs.append(
                (
                    f"{model} {precision}",
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    ),
                )
            )
    failed = []
    for name, process in jobs:
        output, _ = process.communicate()
        print(f"{name}: {output.strip().splitlines()[-1] if output.strip() else ''}", flush=True)
        if process.returncode != 0:
            failed.append(f"{name} (exit {process.returncode}):\n{output[-3000:]}")
    if failed:
        raise RuntimeError("export failed: " + "\n".join(failed))
    return {precision: root / precision for precision in PRECISIONS}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="writes ROOT/fp32 and ROOT/fp16")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args(argv)
    build(args.root, tuple(args.models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
