#!/usr/bin/env bash
# The GPU check: serving, explanations, jobs and training on one NVIDIA GPU, each step on a time
# budget, the whole run within 12 minutes (docs/gpu.md). Results go to OUTDIR (at most 8 files).
#
#   scripts/gpu-check.sh OUTDIR                       # every step
#   scripts/gpu-check.sh OUTDIR --steps setup,env,export,tests,bench
#   scripts/gpu-check.sh OUTDIR --steps setup,train-speed,train --minutes 9
#   scripts/gpu-check.sh OUTDIR --rehearse            # on a machine without a GPU: CPU stand-ins
#
# PYTHON picks the interpreter (default python3, the one with PyTorch). Parts made by
# scripts/gpu-pack.sh (.gpu1/, .gpu2/, ...) are reassembled and installed first when present.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "gpu-check: no $python; set PYTHON" >&2; exit 2; }
cd "$root"
exec "$python" scripts/gpu_check.py "$@"
