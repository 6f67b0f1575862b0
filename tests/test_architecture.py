"""The layering rules of DESIGN.md hold: `.importlinter`'s contracts, checked by import-linter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and " 0 broken" in result.stdout


def test_cnnzoo_links_each_mapped_folder_in_place():
    """import-linter reads a package from the folder it is imported from: `cnnzoo/zoo` etc. are
    links to the top-level folders that pyproject maps under `cnnzoo`, so `lint-imports` sees
    the installed layout; each mapped folder needs its link."""
    import tomllib

    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    for package, folder in mapping.items():
        if package == "cnnzoo":
            continue
        link = ROOT / package.replace(".", "/")
        assert link.is_symlink(), f"{link.relative_to(ROOT)} should link to ../{folder}"
        assert link.resolve() == (ROOT / folder).resolve()


def test_the_installed_package_is_cnnzoo_alone():
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {name.split(".")[0] for name in setuptools["packages"]} == {"cnnzoo"}
    assert set(setuptools["package-dir"]) <= set(setuptools["packages"])
