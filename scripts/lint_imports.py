"""Check the architecture contracts in `.importlinter` with import-linter.

import-linter finds a package by walking the folder it is imported from, but cnnzoo's
sub-packages live in top-level folders that setuptools maps under `cnnzoo` (`zoo/` is
`cnnzoo.zoo`, ...). This script lays the package out as it is installed, with symbolic links
into the checkout, in a temporary folder, and runs `lint-imports` there.

Usage: python scripts/lint_imports.py [lint-imports options, e.g. --verbose]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def link_installed_layout(destination: Path) -> None:
    """Recreate `cnnzoo/` under `destination` as pyproject's package-dir maps it."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    top = destination / "cnnzoo"
    top.mkdir()
    for item in (ROOT / mapping["cnnzoo"]).iterdir():
        (top / item.name).symlink_to(item)
    for package, folder in mapping.items():
        if package != "cnnzoo":
            (destination / package.replace(".", "/")).symlink_to(ROOT / folder)


def main(argv: list[str]) -> int:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory() as tmp:
        link_installed_layout(Path(tmp))
        env = dict(os.environ, PYTHONPATH=tmp)
        command = [str(lint_imports), str(ROOT / ".importlinter"), "--no-cache"]
        return subprocess.run([*command, *argv], cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
