"""The shape of an analysis kind: one class per kind, in its own module under `kinds/`.

A kind declares its `Options` (a dataclass of typed, checked fields, see `options`), resolves
them against the job's world (`resolve_options`: model-dependent defaults, layer names, bounds),
runs (`run`: writes its pictures through the context, returns its manifest section), has a
`title`, and makes its gallery pages from its manifest section (`pages`; by default one page of
its pictures with their captions). `cnnzoo.interpret.jobs.registry` maps each kind's name to its
class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from cnnzoo.interpret.jobs.context import JobContext
from cnnzoo.interpret.jobs.options import Options
from cnnzoo.interpret.jobs.site import INDEX, Page, analysis_page, layer_page
from cnnzoo.interpret.jobs.world import World

__all__ = ["Analysis"]

OptionsT = TypeVar("OptionsT", bound=Options)


class Analysis(Generic[OptionsT]):
    """One `[[analyses]]` entry of a job: its kind (the class), position and options.

    Attributes:
        kind: the name job files use.
        title: the gallery's heading for the analysis.
        Options: the kind's options dataclass.
        index: position in the job's `analyses` (from 0).
        options: the options (after `resolve`, with every model-dependent default filled in).
        source: the job file's name, for messages.
    """

    kind: ClassVar[str]
    title: ClassVar[str]
    Options: ClassVar[type[Options]]
    legends: ClassVar[tuple[str, ...]] = ()  # colour legends its pictures need (see macros.html)

    def __init__(self, index: int, options: OptionsT, source: str) -> None:
        self.index = index
        self.options = options
        self.source = source

    @property
    def id(self) -> str:
        """A stable name (`NN-kind`) for the analysis's files and resume state."""
        return f"{self.index + 1:02d}-{self.kind}"

    @property
    def where(self) -> str:
        """How messages name the analysis: "job.toml: analyses[0] (max-activations)"."""
        return f"{self.source}: analyses[{self.index}] ({self.kind})"

    @classmethod
    def parse(cls, index: int, raw: Mapping[str, Any], source: str) -> Analysis[Any]:
        """The analysis for a job file's table (its `kind` already looked up)."""
        where = f"{source}: analyses[{index}] ({cls.kind})"
        options = cls.Options.parse({k: v for k, v in raw.items() if k != "kind"}, where)
        return cls(index, options, source)

    def resolve(self, world: World) -> Analysis[OptionsT]:
        """A copy whose options are resolved against `world` (see `resolve_options`)."""
        return type(self)(self.index, self.resolve_options(world), self.source)

    def resolve_options(self, world: World) -> OptionsT:
        """Fill in model-dependent defaults and check the options against the world; raise a
        `CnnzooError` naming `self.where` otherwise. Kinds without such options keep these."""
        return self.options

    def run(self, ctx: JobContext) -> dict[str, Any]:
        """Do the work; return the manifest section (see `section`)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """What the job asks of this analysis (manifest and resume fingerprint)."""
        return {"kind": self.kind, "id": self.id, **self.options.to_dict()}

    # -- helpers for `run` -------------------------------------------------------------------

    def section(
        self,
        ctx: JobContext,
        records: dict[str, dict[str, Any]],
        warnings: Sequence[str] = (),
        **extra: Any,
    ) -> dict[str, Any]:
        """The manifest section: kind, id, title, options, every part's files, `warnings`
        (why some maps cannot depend on the input) and `extra` (usually `tables`); records each
        part's seconds in the timings."""
        ctx.timings.setdefault(self.id, {})["parts"] = {
            k: r.get("seconds") for k, r in records.items()
        }
        return {
            "kind": self.kind,
            "id": self.id,
            "title": self.title,
            "options": self.options.to_dict(),
            "files": [item for record in records.values() for item in record["files"]],
            "warnings": list(dict.fromkeys(warnings)),
            **extra,
        }

    # -- the gallery (from the manifest alone, so it can be rebuilt from manifest.json) ------

    @classmethod
    def pages(cls, section: dict[str, Any], manifest: dict[str, Any]) -> list[Page]:
        """The analysis's gallery pages: by default one page of its pictures and captions."""
        return [
            Page(
                path=analysis_page(section["id"]),
                template="figures.html",
                title=section["title"],
                trail=[("overview", INDEX)],
                context={
                    "options": section["options"],
                    "files": section["files"],
                    "legends": list(cls.legends),
                    "warnings": section["warnings"],
                },
            )
        ]

    @classmethod
    def contents(cls, section: dict[str, Any]) -> list[dict[str, str]]:
        """Entries under the analysis in the overview's table of contents: {name, href, note}
        per layer for kinds with a page per layer, else none."""
        return []

    def per_image(
        self, ctx: JobContext, images: Sequence[int], render: Callable[[int], dict[str, Any]]
    ) -> dict[str, Any]:
        """Run `render(image index)` once per image (resumable parts keyed `image-<index>`) and
        table each part's data by image index; the parts' `warnings` become the section's."""
        keys = [f"image-{i}" for i in images]
        records = ctx.run_parts(self.id, keys, lambda key: render(int(key.split("-")[1])))
        warnings = [w for r in records.values() for w in r["data"].get("warnings", [])]
        return self.section(
            ctx,
            records,
            warnings=warnings,
            tables={str(r["data"]["image"]): r["data"] for r in records.values()},
        )

    @classmethod
    def layers_page(cls, section: dict[str, Any]) -> Page:
        """The analysis page of a kind with a page per layer: each layer's overview picture
        (`<id>/<layer>.png`), linking to the layer's page."""
        pictures = {item["path"]: item for item in section["files"]}
        layers = [
            {
                "name": layer,
                "href": layer_page(section["id"], layer),
                "picture": pictures[f"{section['id']}/{layer}.png"],
            }
            for layer in section["tables"]
        ]
        return Page(
            path=analysis_page(section["id"]),
            template="layers.html",
            title=section["title"],
            trail=[("overview", INDEX)],
            context={
                "options": section["options"],
                "layers": layers,
                "legends": list(cls.legends),
                "warnings": section["warnings"],
            },
        )

    @classmethod
    def layer_contents(cls, section: dict[str, Any]) -> list[dict[str, str]]:
        """Table-of-contents entries for a kind with a page per layer."""
        return [
            {
                "name": layer,
                "href": layer_page(section["id"], layer),
                "note": f"{len(channels)} channels",
            }
            for layer, channels in section["tables"].items()
        ]
