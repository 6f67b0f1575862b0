"""The gallery's pages: what a page is, where each lives, and how it is rendered (Jinja2
templates in `templates/` and the shared `cnnzoo.web` base page, autoescaped).

Every page is a file at the top of the job's output folder, so every link and image source is a
plain relative path (the folder opens from disk, can be moved, or served as it is):

    index.html                              the overview
    <analysis id>.html                      one analysis
    <analysis id>.<layer>.html              one layer of an analysis (a thumbnail per channel)
    <analysis id>.<layer>.<channel>.html    one channel (max-activations: its top-k tiles)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnzoo.fileio import atomic_write_text
from cnnzoo.web import environment

__all__ = [
    "INDEX",
    "Page",
    "analysis_page",
    "by_channel",
    "channel_page",
    "layer_page",
    "render_page",
    "write_pages",
]

INDEX = "index.html"

# The gallery's own templates, then the base page it shares with the explorer (`cnnzoo.web`).
_ENVIRONMENT = environment(("cnnzoo.interpret.jobs", "templates"))


def by_channel(table: dict[str, Any]) -> list[tuple[str, Any]]:
    """A manifest table keyed by channel ("0", "16", "8": JSON keys are strings, stored sorted
    as text) in channel order."""
    return sorted(table.items(), key=lambda item: int(item[0]))


def analysis_page(analysis_id: str) -> str:
    return f"{analysis_id}.html"


def layer_page(analysis_id: str, layer: str) -> str:
    return f"{analysis_id}.{layer}.html"


def channel_page(analysis_id: str, layer: str, channel: int | str) -> str:
    return f"{analysis_id}.{layer}.{int(channel):04d}.html"


@dataclass
class Page:
    """One HTML file of the gallery.

    Attributes:
        path: its file name (see the module docstring).
        template: the template in `templates/` that renders it.
        title: its heading (and the window title).
        trail: (title, file) of the pages above it, the overview first.
        context: what the template needs besides the above.
    """

    path: str
    template: str
    title: str
    trail: list[tuple[str, str]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)


def render_page(page: Page, job_name: str) -> str:
    """The page's HTML."""
    template = _ENVIRONMENT.get_template(page.template)
    return template.render(job_name=job_name, title=page.title, trail=page.trail, **page.context)


def write_pages(out_dir: Path, pages: list[Page], job_name: str) -> list[Path]:
    """Write every page atomically under `out_dir`; their paths."""
    written = []
    for page in pages:
        path = Path(out_dir) / page.path
        atomic_write_text(path, render_page(page, job_name))
        written.append(path)
    return written
