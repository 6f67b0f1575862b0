"""Every Python package folder is in pyproject's explicit package list: a non-editable install
(the Docker image, `pip install cnnzoo`) ships only the listed ones, and a folder missing there
breaks the installed `cnnzoo` command while editable installs keep working."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {name: ROOT / path for name, path in config["package-dir"].items()}
    missing = set()
    for name, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            package = ".".join((name, *relative))
            if not any(part.startswith(".") or part == "__pycache__" for part in relative):
                missing |= {package} - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
