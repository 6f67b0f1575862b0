"""The documentation says what the code does: the site builds strictly, generated pages are up
to date, and the reference pages list what the parsers, tables and cards hold."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from cnnzoo.cli import build_parser
from cnnzoo.interpret.jobs.registry import KINDS
from cnnzoo.interpret.methods import METHODS
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = ROOT / "bench" / "results"


def _bench_tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "scripts/bench_tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the site -----------------------------------------------------------------------------------


def test_the_site_builds_strictly(tmp_path: Path):
    """`mkdocs build --strict`: a dead link or anchor, a page missing from the nav, a nav entry
    without its page or a docstring mkdocstrings cannot read is a warning, and fails it."""
    mkdocs = require_tool(
        "mkdocs",
        "pip install -e '.[docs]' (`make venv` installs it)",
        Path(sys.executable).parent / "mkdocs",
    )
    site = tmp_path / "site"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
        + ["--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # every Markdown page became a page, and the API reference was generated from the code
    for page in DOCS.rglob("*.md"):
        relative = page.relative_to(DOCS).with_suffix("")
        folder = relative.parent if relative.name == "index" else relative  # a/b.md -> a/b/
        assert (site / folder / "index.html").is_file(), f"{page.relative_to(ROOT)} was not built"
    api = (site / "api" / "zoo" / "index.html").read_text()
    assert 'id="cnnzoo.zoo.registry.build_model"' in api
    assert "Build the zoo model" in api  # build_model's docstring


def test_no_page_holds_a_placeholder_for_text_to_come():
    """A line that is one upper-case word (BENCH_PLACEHOLDER, PARITY_TABLE) is a slot for
    generated text that was never filled."""
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            assert not re.fullmatch(r"[A-Z][A-Z0-9]*_[A-Z0-9_]+", line.strip()), (
                f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
            )


def test_readme_links_point_at_files():
    """The README is read on its own (not by mkdocs): each relative link names a file."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert relative
    for link in relative:
        path = link.split("#")[0]
        assert (ROOT / path).exists(), f"README links to {link}, which does not exist"


def test_readme_gives_the_two_set_up_commands_ci_runs():
    """`.ci/run` runs "the README's test command": the quick start's `make test`."""
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start")[1].split("\n## ")[0]
    first_block = quick_start.split("```bash")[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert len(readme.splitlines()) <= 200


# -- generated pages ----------------------------------------------------------------------------


def test_the_benchmark_page_is_what_the_committed_results_give():
    page = (DOCS / "benchmarks.md").read_text()
    assert page == _bench_tables().render(RESULTS), (
        "docs/benchmarks.md is not what bench/results gives: run `python scripts/bench_tables.py`"
    )


def test_every_results_file_has_its_section_on_the_benchmark_page():
    page = (DOCS / "benchmarks.md").read_text()
    for path in sorted(RESULTS.glob("*.json")):
        assert f"bench/results/{path.name}" in page, path.name


def test_benchmark_figures_come_from_the_results(tmp_path: Path):
    """Change a figure in a copy of the results: the page follows, verdicts included."""
    tables = _bench_tables()
    for path in RESULTS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    (serving,) = tmp_path.glob("serving_cpu-*.json")
    data = json.loads(serving.read_text())
    row = next(r for r in data["rows"] if r.get("target") == ">= 0.95")
    row["ratio"], row["req_per_s"] = 0.97, 12345.6
    serving.write_text(json.dumps(data))
    page = tables.render(tmp_path)
    assert "| 12,346 |" in page
    assert "| 0.97 (cnnzoo / bare) | >= 0.95: met |" in page
    assert "| 0.86 (cnnzoo / bare) | >= 0.95: missed |" in tables.render(RESULTS)


def test_a_results_file_of_a_new_kind_still_gets_a_section(tmp_path: Path):
    (tmp_path / "newbench_gpu.json").write_text(
        json.dumps(
            {"device": "cuda", "rows": [{"batch": 8, "img_per_s": 12345.6, "p50_ms": 0.01234}]}
        )
    )
    page = _bench_tables().render(tmp_path)
    assert "## Other results" in page and "### `newbench_gpu`" in page
    assert "| device | cuda |" in page and "| rows.0.batch | 8 |" in page
    assert "| rows.0.img_per_s | 12,346 |" in page and "| rows.0.p50_ms | 0.0123 |" in page


def test_bench_tables_check_fails_on_a_stale_page(tmp_path: Path):
    stale = tmp_path / "benchmarks.md"
    stale.write_text((DOCS / "benchmarks.md").read_text().replace("2,354", "9,999"))
    script = str(ROOT / "scripts" / "bench_tables.py")
    result = subprocess.run(
        [sys.executable, script, "--check", "--out", str(stale)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "make bench-tables" in result.stderr
    ok = subprocess.run(
        [sys.executable, script, "--check", "--out", str(DOCS / "benchmarks.md")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("value", "target", "expected"),
    [
        (0.96, ">= 0.95", "met"),
        (0.95, ">= 0.95", "met"),
        (0.94, ">= 0.95", "missed"),
        (1.26, "<= 1.3", "met"),
        (1.31, "<= 1.3", "missed"),
        (3.9, ">= 4", "missed"),
        (1.0, "ours >= captum", ""),
        (None, ">= 2", ""),
        (1.0, "", ""),
    ],
)
def test_targets_are_judged_from_the_measured_ratio(value, target, expected):
    assert _bench_tables().verdict(value, target) == expected


# -- reference pages against the code ------------------------------------------------------------


def _sections(text: str, heading: str) -> dict[str, str]:
    """`heading`-level sections of a page by title (`## `cnnzoo serve`` -> "cnnzoo serve")."""
    parts = re.split(rf"^{heading} (.+)$", text, flags=re.M)
    return {title.strip("` "): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def _commands() -> dict[str, object]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return dict(sub.choices)


def test_the_command_reference_documents_every_option_of_every_command():
    sections = _sections((DOCS / "reference" / "cli.md").read_text(), "##")
    for name, command in _commands().items():
        section = sections.get(f"cnnzoo {name}")
        assert section is not None, f"docs/reference/cli.md has no section for `cnnzoo {name}`"
        for action in command._actions:  # type: ignore[attr-defined]
            for option in action.option_strings:
                if option in ("-h", "--help", "--log-level"):
                    continue
                assert f"`{option}" in section or f", {option}" in section, (
                    f"cnnzoo {name} {option} is not in docs/reference/cli.md"
                )


def test_the_command_reference_names_no_option_a_command_lacks():
    """The synopsis (the first code block of each section) uses the parser's options only."""
    sections = _sections((DOCS / "reference" / "cli.md").read_text(), "##")
    for name, command in _commands().items():
        synopsis = sections[f"cnnzoo {name}"].split("```")[1]
        known = {o for a in command._actions for o in a.option_strings}  # type: ignore[attr-defined]
        lines = [line for line in synopsis.splitlines() if not line.startswith("torchrun")]
        used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", "\n".join(lines)))
        assert used <= known, f"cnnzoo {name}: {sorted(used - known)} are not its options"


def test_the_job_file_page_documents_every_kind_and_option():
    page = (DOCS / "job-files.md").read_text()
    kinds = _sections(page.split("## Analysis kinds")[1].split("\n## ")[0], "###")
    titles = {title.split("`")[0].strip(): body for title, body in kinds.items()}
    for kind, cls in KINDS.items():
        assert kind in titles, f"docs/job-files.md has no section for the {kind!r} kind"
        for option in cls.Options.__dataclass_fields__:
            assert f"| `{option}` |" in titles[kind], f"{kind}: option {option!r} is undocumented"


def test_the_methods_table_lists_every_method():
    page = (DOCS / "interpretability.md").read_text()
    table = page.split("## Methods")[1].split("\n## ")[0]
    assert re.findall(r"^\| `([a-z-]+)` \|", table, re.M) == list(METHODS)


def test_the_model_page_quotes_the_shipped_cards():
    page = (DOCS / "models.md").read_text()
    presets = page.split("## The presets")[1].split("\n## ")[0]
    cards = sorted((ROOT / "zoo" / "weights").glob("*/card.json"))
    assert cards
    for card_path in cards:
        card = json.loads(card_path.read_text())
        rows = [line for line in presets.splitlines() if line.startswith(f"| `{card['model']}`")]
        assert rows, f"docs/models.md has no row for {card['model']}"
        top1 = f"{100 * card['metrics']['top1']:.2f} %"
        assert all(top1 in row for row in rows), f"{card['model']}: the card says {top1}"
        if card["hardware"]["device"] == "cuda":  # the GPU recipes' table gives the wall time
            assert f"{card['wall_time_seconds']:.0f} s" in rows[-1], card["model"]
