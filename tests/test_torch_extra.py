"""PyTorch is an extra: the serving side runs without it, and a command that needs it says which
extra to install. "Without it" is made real in a subprocess whose import system refuses torch,
torchvision, captum and onnxscript (as a venv made with `pip install cnnzoo` lacks them)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_WITHOUT_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "captum", "onnxscript"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())
    from cnnzoo.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _cnnzoo_without_torch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, *args],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )  # fmt: skip


def test_training_without_torch_names_the_extra(tmp_path):
    result = _cnnzoo_without_torch("train", "lenet5-mnist", "--out", str(tmp_path / "runs"))
    assert result.returncode == 3, result.stderr
    assert "pip install 'cnnzoo[torch]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1  # one line


def test_listing_and_explanation_graphs_work_without_torch(tmp_path):
    from cnnzoo.cli import main

    repository = tmp_path / "repository"
    assert main(["export", "lenet5-mnist", "--repository", str(repository),
                 "--explanations", "none"]) == 0  # fmt: skip
    listed = _cnnzoo_without_torch("list")
    assert listed.returncode == 0 and "lenet5-mnist" in listed.stdout, listed.stderr
    built = _cnnzoo_without_torch(
        "explain-export", str(repository), "lenet5-mnist", "--methods", "gradient,grad-cam"
    )
    assert built.returncode == 0, built.stderr
    assert (repository / "lenet5-mnist.grad-cam" / "1" / "model.onnx").is_file()
    helped = _cnnzoo_without_torch("serve", "--help")
    assert helped.returncode == 0 and "--repository" in helped.stdout
