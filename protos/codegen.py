"""Regenerate the committed protobuf/gRPC modules from every `protos/*.proto`.

Run `python -m cnnzoo.protos.codegen` (or `make protos`). With `--out DIR` it writes into DIR
instead, which the stale-stub test uses to compare against the committed files.

Triton's files (`grpc_service.proto`, `model_config.proto`) are compiled under their own names,
as tritonclient compiles them, so the two share protobuf's descriptor pool in one process; their
generated cross-imports (`import model_config_pb2`) are pointed at `cnnzoo.protos`, as
tritonclient points its own at `tritonclient.grpc`. cnnzoo's `zoo.proto` is compiled as
`cnnzoo/protos/zoo.proto`, a name no other project registers.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PACKAGE = "cnnzoo.protos"
# Files registered under Triton's names (the pool key tritonclient uses too).
TRITON_FILES = ("grpc_service.proto", "model_config.proto")


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def _stage(staging: Path) -> list[str]:
    """Copy the sources into the layout that gives each file its registered name."""
    names = []
    for proto in proto_files():
        relative = proto.name if proto.name in TRITON_FILES else f"cnnzoo/protos/{proto.name}"
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto, target)
        names.append(relative)
    return names


def _point_imports_at_package(text: str) -> str:
    # protoc writes `import model_config_pb2 as model__config__pb2` for a root-level import
    return re.sub(
        r"^import (\w+_pb2(?:_grpc)?) as (\w+)$",
        rf"from {PACKAGE} import \1 as \2",
        text,
        flags=re.M,
    )


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into `out_dir`; returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staging, build = Path(tmp, "src"), Path(tmp, "out")
        build.mkdir()
        files = _stage(staging)
        if not files:
            return []
        args = [
            "grpc_tools.protoc",
            f"-I{staging}",
            f"-I{well_known}",
            f"--python_out={build}",
            f"--pyi_out={build}",
            f"--grpc_python_out={build}",
            *files,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {files}")
        written = []
        for generated in sorted(build.rglob("*_pb2*.py*")):
            target = out_dir / generated.name
            target.write_text(_point_imports_at_package(generated.read_text()))
            written.append(target)
        return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_DIR, help="folder to write into")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
