"""The gallery: a static site of a job's results that opens from disk in any browser, built from
the manifest alone (`write_gallery(folder, json.load(manifest.json))` rebuilds it) and without
its timings, so a resumed or sharded run writes the same pages as an uninterrupted one.

The overview (`index.html`) shows the job's parameters, the model's sha256, any warnings, a table
of contents (each analysis and, for kinds with a page per layer, its layers) and the colour
legends; each analysis kind makes its own pages (`Analysis.pages`). Where the pages live and how
they are rendered: `cnnzoo.interpret.jobs.site`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnzoo.interpret.jobs.registry import KINDS
from cnnzoo.interpret.jobs.site import INDEX, Page, analysis_page, write_pages

__all__ = ["gallery_pages", "write_gallery"]

NOTE = (
    "Deconvnet and guided-backprop maps show which image structure drives a unit; they change "
    "little when the top layers are randomised (Adebayo et al. 2018), so read them as feature "
    "visualisations, not as evidence for a class. Grad-CAM and occlusion do depend on the class."
)


def gallery_pages(manifest: dict[str, Any]) -> list[Page]:
    """Every page of the gallery for a job manifest, the overview first."""
    toc, pages, warnings = [], [], []
    for section in manifest["analyses"]:
        kind = KINDS[section["kind"]]
        pages += kind.pages(section, manifest)
        warnings += section["warnings"]
        toc.append(
            {
                "title": section["title"],
                "id": section["id"],
                "href": analysis_page(section["id"]),
                "layers": kind.contents(section),
            }
        )
    overview = Page(
        path=INDEX,
        template="overview.html",
        title=manifest["job"]["name"],
        context={
            "model": manifest["model"],
            "dataset": manifest["dataset"],
            "job": manifest["job"],
            "toc": toc,
            "warnings": list(dict.fromkeys(warnings)),
            "note": NOTE,
        },
    )
    return [overview, *pages]


def write_gallery(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write every page under `out_dir` (atomically, one by one); the overview's path."""
    write_pages(Path(out_dir), gallery_pages(manifest), manifest["job"]["name"])
    return Path(out_dir) / INDEX
