#!/usr/bin/env bash
# Install Triton's perf_analyzer (the load generator the serving tests and bench/serving.py use)
# into .tools/ (or DEST): the binary from the tritonclient 2.51.0 wheel (the last wheel that ships
# it), the CUDA 12 runtime library it links against from NVIDIA's nvidia-cuda-runtime-cu12 wheel
# (it runs on machines without a GPU), and Debian's libb64-0d. .tools/bin/perf_analyzer is a
# wrapper that sets LD_LIBRARY_PATH, so tests find it as an ordinary program.
#
#   scripts/install_perf_analyzer.sh [DEST]      # needs pip; installs libb64-0d with apt-get as root
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$(mkdir -p "${1:-$root/.tools}" && cd "${1:-$root/.tools}" && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3

if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "perf_analyzer needs Debian's libb64-0d: sudo apt-get install libb64-0d" >&2
    exit 1
  fi
  apt-get install -y --no-install-recommends libb64-0d >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends libb64-0d >/dev/null; }
fi

if [ ! -x "$dest/libexec/perf_analyzer" ] || [ ! -e "$dest/lib/libcudart.so.12" ]; then
  wheels="$(mktemp -d)"
  trap 'rm -rf "$wheels"' EXIT
  "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" \
    tritonclient==2.51.0 nvidia-cuda-runtime-cu12==12.9.79
  mkdir -p "$dest/libexec" "$dest/lib" "$dest/bin"
  unzip -q -o -j "$wheels"/tritonclient-2.51.0-*.whl \
    'tritonclient-2.51.0.data/data/bin/perf_analyzer' -d "$dest/libexec"
  unzip -q -o -j "$wheels"/nvidia_cuda_runtime_cu12-*.whl \
    'nvidia/cuda_runtime/lib/libcudart.so.12' -d "$dest/lib"
  chmod 0755 "$dest/libexec/perf_analyzer"
fi

cat > "$dest/bin/perf_analyzer" <<'WRAPPER'
#!/bin/sh
here="$(dirname "$(readlink -f "$0")")/.."
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/libexec/perf_analyzer" "$@"
WRAPPER
chmod 0755 "$dest/bin/perf_analyzer"
"$dest/bin/perf_analyzer" --version >/dev/null 2>&1 || "$dest/bin/perf_analyzer" --help >/dev/null
echo "perf_analyzer: $dest/bin/perf_analyzer"
