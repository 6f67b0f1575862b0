"""What scripts/gpu-pack.sh packs: the wheels a CUDA host lacks, pinned to the versions this
environment tests, and the requirement each must meet (so the host installs only what it lacks).

    python scripts/gpu_pack.py wheels [--host-list FILE]   # name==version lines to download
    python scripts/gpu_pack.py manifest FOLDER [--host-list FILE]   # FOLDER/pack.json
    python scripts/gpu_pack.py split --part-bytes N --into ROOT ARCHIVE...   # ROOT/.gpuK/ parts

The wheels: the project's runtime dependencies and the GPU tests' tools (pytest, tritonclient's
gRPC client), with everything they need in turn, except what a CUDA host with PyTorch already
holds (torch, torchvision, numpy, onnx and their own dependencies) and onnxruntime (packed as
onnxruntime-gpu). With `--host-list` (the host's `pip list --format=freeze`), also without what
the host has at a version the project accepts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
}
ON_THE_HOST = ("torch", "torchvision", "numpy", "onnx")  # with their dependencies
NEVER = ("onnxruntime", "onnxruntime-gpu", "triton")  # packed apart, or GPU builds of the host
# Dependencies of the host's packages whose version the project constrains more tightly (the
# generated gRPC/protobuf code needs protobuf >= 6.33.5; onnx accepts much older ones).
TIGHTER = ("protobuf",)
# What the modules holding GPU tests import beyond the project (test_metrics.py: yaml).
TEST_TOOLS = ("pytest", "tritonclient[grpc]", "pyyaml")
ONNXRUNTIME_GPU = "onnxruntime-gpu==1.31.1"


def split(archives: list[Path], part_bytes: int, into: Path) -> list[Path]:
    """Cut each archive into parts of at most `part_bytes`, part k into `into/.gpuK/` (numbered
    on across archives) beside the archive's manifest (name, part count, sha256, bytes), which
    scripts/gpu_check.py reassembles and checks. Old `.gpuK/` folders are removed first."""
    for old in into.glob(".gpu[0-9]*"):
        shutil.rmtree(old)
    folders = []
    for archive in archives:
        size = archive.stat().st_size
        count = max(1, -(-size // part_bytes))
        digest = hashlib.sha256()
        with open(archive, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        manifest = {"archive": archive.name, "parts": count, "sha256": digest.hexdigest(),
                    "bytes": size}  # fmt: skip
        with open(archive, "rb") as handle:
            for index in range(1, count + 1):
                folder = into / f".gpu{len(folders) + 1}"
                folder.mkdir()
                with open(folder / f"{archive.name}.part-{index:02d}", "wb") as part:
                    left = part_bytes
                    while left and (chunk := handle.read(min(left, 1 << 22))):
                        part.write(chunk)
                        left -= len(chunk)
                (folder / f"{archive.name}.manifest.json").write_text(json.dumps(manifest) + "\n")
                folders.append(folder)
    return folders


def _project_requirements() -> list[Requirement]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the GPU check trains and runs jobs too: the torch extra (torch itself is on the host)
    extra = project.get("optional-dependencies", {}).get("torch", [])
    return [Requirement(r) for r in [*project["dependencies"], *extra]]


def _applies(requirement: Requirement, extras: tuple[str, ...] = ("",)) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**TARGET, "extra": e}) for e in extras)


def _closure(roots: list[Requirement]) -> dict[str, Requirement | None]:
    """{distribution: the requirement that named it} over installed metadata."""
    found: dict[str, Requirement | None] = {}
    pending = [(r, tuple(r.extras) or ("",)) for r in roots]
    while pending:
        requirement, extras = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found or not _applies(requirement):
            continue
        found[name] = requirement
        try:
            needs = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in needs:
            child = Requirement(text)
            if _applies(child, (*extras, "")) and not _is_extra_only(child, extras):
                pending.append((child, tuple(child.extras) or ("",)))
    return found


def _is_extra_only(requirement: Requirement, extras: tuple[str, ...]) -> bool:
    """A requirement guarded by `extra == ...` that none of `extras` asks for."""
    marker = str(requirement.marker or "")
    if "extra" not in marker:
        return False
    return not any(requirement.marker.evaluate({**TARGET, "extra": e}) for e in extras if e)


def _host_list(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    host = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;]+)", line.strip())
        if match:
            host[canonicalize_name(match.group(1))] = match.group(2)
    return host


def plan(host_list: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """(name==version to download, {name: the project's requirement specifier})."""
    project = _project_requirements()
    ours = _closure([*project, *(Requirement(t) for t in TEST_TOOLS)])
    host = _closure([Requirement(n) for n in ON_THE_HOST])
    named = {canonicalize_name(r.name): str(r.specifier) for r in project if _applies(r)}
    listed = _host_list(host_list)
    wanted = []
    for name in sorted(ours):
        if name in NEVER or (name in host and name not in TIGHTER):
            continue
        if name.startswith(("nvidia-", "cuda-")) and name not in named:
            continue  # CUDA libraries come with the host's torch
        if name in listed:
            spec = named.get(name)
            if not spec or listed[name] in Requirement(f"{name}{spec}").specifier:
                continue  # the host's copy will do
        try:
            wanted.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise SystemExit(
                f"{name} is needed but not installed here: install cnnzoo[test]"
            ) from None
    return wanted, {n: s for n, s in named.items() if s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("wheels", "manifest", "split"))
    parser.add_argument(
        "paths", nargs="*", type=Path, help="manifest: the folder; split: the archives"
    )
    parser.add_argument("--host-list", type=Path, help="the host's pip list --format=freeze")
    parser.add_argument("--part-bytes", type=int, help="split: the largest part")
    parser.add_argument("--into", type=Path, help="split: the folder that gets .gpuN/")
    args = parser.parse_intermixed_args(argv)
    if args.what == "split":
        if not args.paths or not args.part_bytes or args.part_bytes < 1 or args.into is None:
            parser.error("split needs ARCHIVE..., --part-bytes N (> 0) and --into FOLDER")
        for folder in split(args.paths, args.part_bytes, args.into):
            print(folder.name, *(p.name for p in sorted(folder.iterdir())))
        return 0
    wanted, requirements = plan(args.host_list)
    if args.what == "wheels":
        print("\n".join(wanted))
        return 0
    if len(args.paths) != 1:
        parser.error("manifest needs FOLDER")
    (folder,) = args.paths
    wheels = sorted(p.name for p in (folder / "wheels").glob("*.whl"))
    document = {
        "python": TARGET["python_version"],
        "onnxruntime": ONNXRUNTIME_GPU,
        "requirements": {**requirements, "onnxruntime-gpu": "==1.31.1"},
        "wheels": wheels,
    }
    (folder / "pack.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
