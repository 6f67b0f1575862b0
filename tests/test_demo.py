"""`make demo` (scripts/demo.sh) runs end to end on the ports it is given, offline, with what ships
in the repository: the README's first command."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scripts" / "demo.sh"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        REPOSITORY=str(tmp_path / "repository"),
        OUT=str(tmp_path / "gallery"),
        **settings,
    )
    return subprocess.run(
        ["bash", str(DEMO)], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )


@pytest.mark.slow
def test_the_demo_runs_on_the_ports_it_is_given(tmp_path: Path):
    grpc_port, metrics_port = _free_port(), _free_port()
    result = _run(tmp_path, GRPC_PORT=str(grpc_port), METRICS_PORT=str(metrics_port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"gRPC listening on 127.0.0.1:{grpc_port}" in result.stderr
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in result.stderr
    assert "HTTP (KServe v2 REST) listening" not in result.stderr  # the demo needs no REST port
    # every shipped digit is classified as the digit its folder names
    rows = re.findall(r"^examples/digits/(\d)/\S+\.png\s+(\d) \(", result.stdout, re.M)
    assert len(rows) == 20 and all(folder == top1 for folder, top1 in rows), result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    gallery = tmp_path / "gallery" / "index.html"
    assert gallery.is_file() and result.stdout.strip().endswith(str(gallery))
    assert (tmp_path / "repository" / "lenet5-mnist" / "1" / "model.onnx").is_file()


def test_the_demo_refuses_a_port_the_client_cannot_find(tmp_path: Path):
    result = _run(tmp_path, GRPC_PORT="0")
    assert result.returncode == 2
    assert "GRPC_PORT must be a port number from 1 to 65535, got '0'" in result.stderr
    assert not (tmp_path / "repository").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_taken_port_says_how_to_pick_another(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _run(tmp_path, GRPC_PORT=str(taken.getsockname()[1]), METRICS_PORT="-1")
    assert result.returncode == 1
    assert "is the port in use?" in result.stderr
    assert "make demo GRPC_PORT=9001 METRICS_PORT=9002" in result.stderr
    assert not (tmp_path / "repository").exists()  # said before any work
