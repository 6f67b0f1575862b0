"""The explorer on the REST port: `/explorer/` (the page, rendered once from the template it
shares with the job gallery), `/explorer/static/` (its script and style sheet),
`/explorer/examples/` (the shipped example images) and, with `--results DIR`,
`/explorer/results/` (a job's output folder, read-only).

The page calls the same public REST routes as any client (see `web/static/explorer.js`); these
routes only serve files. They are the `explorer` group of `--http-restricted-api`, and TLS
covers them as the rest of the port.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from aiohttp import web

from cnnzoo.serving.http_api.options import ExplorerOptions
from cnnzoo.web import STATIC, environment

__all__ = ["explorer_routes"]

PREFIX = "/explorer"


def explorer_routes(options: ExplorerOptions, max_pixels: int) -> list[web.AbstractRouteDef]:
    """The explorer's routes (see the module docstring)."""
    examples = Path(str(resources.files("cnnzoo.examples")))
    html = (
        environment()
        .get_template("explorer.html")
        .render(
            title="Explorer",
            job_name="cnnzoo",
            trail=[],
            results=options.results is not None,
            examples=json.dumps(_example_images(examples)),
            max_pixels=max_pixels,
        )
    )

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    async def to_page(_: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(f"{PREFIX}/")

    routes = [
        web.get(PREFIX, to_page, allow_head=False),
        web.get(f"{PREFIX}/", page, allow_head=False),
        web.static(f"{PREFIX}/static", STATIC),
        web.static(f"{PREFIX}/examples", examples),
    ]
    if options.results is not None:
        routes.append(web.static(f"{PREFIX}/results", Path(options.results).resolve()))
    return routes


def _example_images(root: Path) -> list[str]:
    """The first two images of each example class folder, relative to `root`."""
    found = []
    for group in ("digits", "cifar10"):
        for folder in sorted(p for p in (root / group).iterdir() if p.is_dir()):
            found += [f"{group}/{folder.name}/{f.name}" for f in sorted(folder.glob("*.png"))[:1]]
    return found
