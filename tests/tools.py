"""Outside programs some tests drive (a browser, Prometheus' promtool, perf_analyzer, ...).

Where one is missing, its tests skip with a reason that says how to get it, so `make test` on a
fresh machine passes; with `CNNZOO_REQUIRE_TOOLS=1` (set by `.ci/run`, which installs them) a
missing program fails the test instead, so CI never skips them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REQUIRE_TOOLS = os.environ.get("CNNZOO_REQUIRE_TOOLS") == "1"


def require_tool(name: str, how_to_get: str, *candidates: str | Path) -> Path:
    """The path of program `name` (on PATH or one of `candidates`); skip or fail without it."""
    for candidate in (*candidates, name):
        found = shutil.which(str(candidate))
        if found:
            return Path(found)
    message = f"{name} not found; {how_to_get}"
    if REQUIRE_TOOLS:
        pytest.fail(f"{message} (CNNZOO_REQUIRE_TOOLS=1)", pytrace=False)
    pytest.skip(message)


TOOLS_BIN = Path(__file__).resolve().parents[1] / ".tools" / "bin"


def require_perf_analyzer() -> Path:
    """Triton's perf_analyzer (installed into .tools/ by scripts/install_perf_analyzer.sh)."""
    return require_tool(
        "perf_analyzer",
        "run scripts/install_perf_analyzer.sh (tritonclient 2.51.0's binary into .tools/; "
        "needs Debian's libb64-0d)",
        TOOLS_BIN / "perf_analyzer",
    )
