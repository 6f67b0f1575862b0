#!/usr/bin/env bash
# Pack what an offline CUDA host lacks for scripts/gpu-check.sh into parts small enough to carry
# beside the working tree (each part plus the tree under 64 MiB): .gpu1/, .gpu2/, ... (git-ignored).
#
#   scripts/gpu-pack.sh                     # onnxruntime-gpu, the missing wheels, perf_analyzer
#   scripts/gpu-pack.sh --data              # ... and MNIST + CIFAR-10 from $CNNZOO_DATA
#   scripts/gpu-pack.sh --host-list host.txt   # leave out what the host has (its pip freeze)
#   scripts/gpu-pack.sh --part-mib 30       # smaller parts (default: 38, or less if the tree is big)
#
# Archives (each split into parts, each part in its own folder with the archive's manifest):
#   software.tar.gz  wheels/ (onnxruntime-gpu 1.31.1 and the others, CPython 3.12, manylinux
#                    x86_64), tools/ (perf_analyzer, its CUDA 12 runtime and libb64), pack.json
#   data.tar.gz   MNIST/raw and cifar-10-batches-bin (with --data)
# Needs pip and the network (the package index) here; nothing on the host. See docs/gpu.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3

data=0
part_mib=""
host_list=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=1 ;;
    --part-mib) part_mib="$2"; shift ;;
    --host-list) host_list=(--host-list "$2"); shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu-pack: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# Each transfer carries one part beside the working tree (tracked and untracked-not-ignored files).
limit_mib=64
tree_bytes=$(git ls-files -co --exclude-standard -z | xargs -0 -r stat -L -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
tree_mib=$(( (tree_bytes + 1048575) / 1048576 ))
room=$(( limit_mib - tree_mib - 1 ))  # 1 MiB of margin
if [ -z "$part_mib" ]; then
  part_mib=$(( room < 38 ? room : 38 ))
fi
if [ "$part_mib" -lt 1 ] || [ "$part_mib" -gt "$room" ]; then
  echo "gpu-pack: the working tree is ${tree_mib} MiB: a part may be at most ${room} MiB" \
       "to stay under ${limit_mib} MiB beside it (got ${part_mib})" >&2
  exit 1
fi

cache="$root/.gpu-pack"
stage="$cache/software"
rm -rf "$stage" "$cache"/*.tar.gz
mkdir -p "$cache/wheels" "$stage/wheels" "$stage/tools"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
download() {
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$cache/wheels" "$@"
}

echo "gpu-pack: onnxruntime-gpu==1.31.1 (about 255 MB) ..."
download onnxruntime-gpu==1.31.1
mapfile -t wanted < <("$python" scripts/gpu_pack.py wheels "${host_list[@]}")
echo "gpu-pack: ${#wanted[@]} more wheels: ${wanted[*]}"
[ ${#wanted[@]} -eq 0 ] || download "${wanted[@]}"
for requirement in onnxruntime-gpu==1.31.1 "${wanted[@]}"; do
  name="${requirement%%==*}"; version="${requirement##*==}"
  # a wheel's file name spells the project with underscores, in any case
  file=$(find "$cache/wheels" -maxdepth 1 -iname "$(echo "$name" | tr '-' '_')-${version}-*.whl" \
    | head -n 1)
  [ -n "$file" ] || { echo "gpu-pack: no wheel for $requirement was downloaded" >&2; exit 1; }
  cp "$file" "$stage/wheels/"
done
"$python" scripts/gpu_pack.py manifest "$stage" "${host_list[@]}"

# perf_analyzer (bench/gpu.py's load generator): the one tests use here, else installed now.
tools="$root/.tools"
if [ ! -x "$tools/libexec/perf_analyzer" ]; then
  tools="$cache/tools"
  scripts/install_perf_analyzer.sh "$tools" >/dev/null || tools=""
fi
if [ -n "$tools" ]; then
  cp -rL "$tools/bin" "$tools/lib" "$tools/libexec" "$stage/tools/"
  libb64=$(ldconfig -p | awk '/libb64\.so\.0d/ {print $NF; exit}')
  [ -n "$libb64" ] && cp -L "$libb64" "$stage/tools/lib/"
else
  echo "gpu-pack: perf_analyzer could not be installed: bench/gpu.py will lack it" >&2
fi
# gzip -1: the wheels are compressed already; perf_analyzer shrinks from 20 to 7 MB
tar -cf - -C "$stage" . | gzip -1 > "$cache/software.tar.gz"
rm -rf "$stage"

archives=("$cache/software.tar.gz")
if [ "$data" -eq 1 ]; then
  data_dir="${CNNZOO_DATA:-$root/data}"
  for folder in MNIST/raw cifar-10-batches-bin; do
    [ -d "$data_dir/$folder" ] || { echo "gpu-pack: no $data_dir/$folder (set CNNZOO_DATA)" >&2; exit 1; }
  done
  echo "gpu-pack: MNIST and CIFAR-10 from $data_dir ..."
  tar -czf "$cache/data.tar.gz" -C "$data_dir" MNIST/raw cifar-10-batches-bin
  archives+=("$cache/data.tar.gz")
fi

# Split the archives: part k goes into .gpuK/ beside its archive's manifest (sha256, part count).
"$python" scripts/gpu_pack.py split --part-bytes $(( part_mib * 1048576 )) --into "$root" \
  "${archives[@]}"
rm -f "${archives[@]}"
echo "gpu-pack: working tree ${tree_mib} MiB; largest transfer $(( tree_mib + part_mib )) MiB" \
     "(limit ${limit_mib}); parts: $(cd "$root" && ls -d .gpu[0-9]* | sort -V | tr '\n' ' ')"
