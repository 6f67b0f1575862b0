"""The look the gallery and the explorer share: Jinja2's environment over `templates/` (the
base page with its style sheet) and the explorer's static files in `static/`.

torch-free (Jinja2 only), so the server renders the explorer page with it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import jinja2

__all__ = ["STATIC", "TEMPLATES", "environment"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"


def environment(*packages: tuple[str, str]) -> jinja2.Environment:
    """An autoescaping environment that finds templates in each (package, folder) first, then
    the shared ones (`base.html`); with the `url` filter for relative links."""
    loaders: list[jinja2.BaseLoader] = [jinja2.PackageLoader(p, folder) for p, folder in packages]
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([*loaders, jinja2.FileSystemLoader(TEMPLATES)]),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the test, not the page
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # Relative links: quoted, keeping folders and a page's #fragment (no file name holds "#").
    env.filters["url"] = lambda path: quote(str(path), safe="/#")
    return env
