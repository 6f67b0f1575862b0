"""`index.html`: a static gallery of a job's pictures that opens from disk in any browser.

One section per analysis, each picture in a <figure> with its caption; links and image sources
are relative paths taken from the manifest (so the folder can be moved or served as is).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cnnzoo.fileio import atomic_write_text

__all__ = ["render_index", "write_index"]

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 100%; }
figure img { image-rendering: pixelated; max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; max-width: 40em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
p.note { font-size: 0.9em; max-width: 50em; color: #444; }
"""

_NOTE = (
    "Deconvnet and guided-backprop maps show which image structure drives a unit; they change "
    "little when the top layers are randomised (Adebayo et al. 2018), so read them as feature "
    "visualisations, not as evidence for a class."
)


def render_index(manifest: dict[str, Any]) -> str:
    """The gallery page for a job manifest."""
    e = html.escape
    job = manifest["job"]
    model = manifest["model"]
    dataset = manifest["dataset"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(job['name'])} - cnnzoo</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{e(job['name'])}</h1>",
        "<dl>",
        f"<dt>model</dt><dd>{e(model['name'])} (weights {e(str(model['weights']))}, "
        f"sha256 {e(str(model['state_sha256'])[:16])}...)</dd>",
        f"<dt>dataset</dt><dd>{e(dataset['name'])}, split {e(dataset['split'])}, "
        f"{dataset['images']} images</dd>",
        '<dt>manifest</dt><dd><a href="manifest.json">manifest.json</a></dd>',
        "</dl>",
        f'<p class="note">{e(_NOTE)}</p>',
    ]
    for section in manifest["analyses"]:
        title = section.get("title", section["kind"])
        parts.append(f'<section id="{e(section["id"])}"><h2>{e(title)}</h2>')
        for item in section["files"]:
            src = quote(item["path"])
            parts.append(
                f'<figure><a href="{src}"><img src="{src}" alt="{e(item["caption"])}" '
                f'loading="lazy"></a><figcaption>{e(item["caption"])}</figcaption></figure>'
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_index(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write `<out_dir>/index.html` atomically."""
    path = Path(out_dir) / "index.html"
    atomic_write_text(path, render_index(manifest))
    return path
