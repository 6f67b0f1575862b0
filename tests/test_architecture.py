"""The layering rules of DESIGN.md hold: `.importlinter`'s contracts, checked by import-linter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lint_imports.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and " 0 broken" in result.stdout


def test_the_installed_package_is_cnnzoo_alone():
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {name.split(".")[0] for name in setuptools["packages"]} == {"cnnzoo"}
    assert set(setuptools["package-dir"]) <= set(setuptools["packages"])
