"""The `cnnzoo` console script itself: the mount, its help and its process-level behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cnnzoo.cli import build_parser

CNNZOO = str(Path(sys.executable).parent / "cnnzoo")
COMMANDS = {"list", "train", "eval", "export", "serve", "classify", "health", "layers", "explain"}
COMMANDS |= {"job", "worker"}


def test_every_package_mounts_its_commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == COMMANDS


def test_help_does_not_import_the_heavy_libraries():
    code = (
        "import sys\n"
        "from cnnzoo.cli import build_parser\n"
        "build_parser()\n"
        "heavy = {'torch', 'onnxruntime', 'grpc', 'onnx'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_closed_pipe_is_not_a_traceback():
    # `cnnzoo list --json | head -0`: the reader is gone before anything is written
    with subprocess.Popen(
        [CNNZOO, "list", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        stderr = process.stderr.read().decode()
        process.wait(timeout=60)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert process.returncode == 141
