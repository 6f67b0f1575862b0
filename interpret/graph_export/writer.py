"""Write a classifier's explanation models into its repository: `M.<method>/config.pbtxt`,
`M.<method>/<v>/model.onnx` and a manifest, one transactional version per method through the
repository's `VersionWriter` (each appears whole or not at all), `<v>` being the classifier's
version it was built from.

Needs only the classifier's model.onnx (and its config.pbtxt): a repository laid out for Triton
by other means works too. Runs without torch; `parity` is an optional callback that adds figures
against another implementation (`cnnzoo export` passes the PyTorch one).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from cnnzoo.errors import IntegrityError, InvalidInput, UnsupportedModel
from cnnzoo.interpret.graphs.build import build_explanation
from cnnzoo.interpret.graphs.methods import GRAPH_METHODS, get_graph_method
from cnnzoo.interpret.graphs.selfcheck import finite_differences, self_check
from cnnzoo.zoo.card import utc_now
from cnnzoo.zoo.repository import (
    CONFIG_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    Manifest,
    ModelRepository,
    TensorConfig,
    VersionWriter,
    build_explanation_config,
    config_text,
)

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "explanation_model_name",
    "export_explanations",
    "is_explanation",
]

DEFAULT_MAX_BATCH_SIZE = 8  # for a classifier whose config.pbtxt has no batching
_TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
}
Parity = Callable[[onnx.ModelProto, str], dict[str, Any]]


def explanation_model_name(model: str, method: str) -> str:
    """The repository name of `model`'s explanation model for `method`."""
    return f"{model}.{method}"


def is_explanation(repository: ModelRepository, model: str) -> bool:
    """Whether a repository model is an explanation model (its config says so)."""
    try:
        return "cnnzoo_explanation" in repository.parameters(model)
    except IntegrityError:
        return False


def export_explanations(
    repository: str | Path,
    model: str,
    *,
    version: int | None = None,
    methods: Sequence[str] = GRAPH_METHODS,
    parity: Callable[[int], Parity] | None = None,
    strict: bool = False,
    progress: Callable[[str], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Build and write `model`'s explanation models, one per method; returns a summary per
    method (`status`: "written", "up to date" or "refused" with the reason).

    Args:
        repository: the model repository.
        model: the classifier's name in it.
        version: the classifier's version (default: its latest); the explanation models get the
            same version number.
        methods: the methods (default: every one).
        parity: given the version, a function (graph, method) -> figures for the manifest.
        strict: raise on a method the classifier does not support instead of reporting it.
        progress: called with a line before each method is built.
        on_row: called with each method's summary as soon as it is known.

    Raises:
        NotFound: no such model or version.
        InvalidInput: an unknown method, or `model` is itself an explanation model.
        IntegrityError: the classifier's files do not match its manifest; an explanation model
            of this version exists but was built from another classifier; a self-check failed.
        UnsupportedModel: (`strict`) the classifier cannot be explained by a method.
    """
    for method in methods:
        get_graph_method(method)
    source = _Classifier.read(repository, model, version)
    compare = parity(source.version) if parity is not None else None
    gradient_check: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for method in methods:
        name = explanation_model_name(model, method)
        started = time.perf_counter()
        row: dict[str, Any] = {"model": name, "explains": model, "method": method,
                               "version": source.version}  # fmt: skip
        if source.has_explanation(name):
            rows.append({**row, "status": "up to date",
                         "path": str(source.repo.root / name / str(source.version))})  # fmt: skip
            continue
        if progress is not None:
            progress(f"building {name} version {source.version}")
        try:
            graph = build_explanation(
                source.graph, method, explains=model, classifier_sha256=source.digest
            )
        except UnsupportedModel as err:
            if strict:
                raise
            done({**row, "status": "refused", "reason": err.reason})
            continue
        if gradient_check is None:
            gradient_check = finite_differences(source.graph)
        written = source.write(name, method, graph, compare, gradient_check)
        done({**row, **written, "seconds": round(time.perf_counter() - started, 2)})
    return rows


@dataclass
class _Classifier:
    """What every explanation model of one classifier version is made from and inherits."""

    repo: ModelRepository
    model: str
    version: int
    digest: str  # sha256 of its model.onnx
    graph: onnx.ModelProto
    precision: str
    labels: list[str]
    parameters: dict[str, str]  # config.pbtxt's, inherited (preprocessing, zoo entry, ...)
    max_batch_size: int

    @classmethod
    def read(cls, repository: str | Path, model: str, version: int | None) -> _Classifier:
        repo = ModelRepository(repository)
        if is_explanation(repo, model):
            raise InvalidInput(f"{model} is an explanation model, not a classifier")
        version = repo.latest_version(model) if version is None else version
        precision = "fp32"
        if repo.has_manifest(model, version):
            precision = repo.verify(model, version).precision
        path = repo.version_dir(model, version) / ONNX_FILE
        if not path.is_file():
            raise IntegrityError(f"{model} version {version} has no {ONNX_FILE}")
        config = repo.config(model)
        labels = repo.labels(model) if (repo.model_dir(model) / LABELS_FILE).is_file() else []
        return cls(
            repo=repo,
            model=model,
            version=version,
            digest=hashlib.sha256(path.read_bytes()).hexdigest(),
            graph=onnx.load(str(path)),
            precision=precision,
            labels=labels,
            parameters={key: value.string_value for key, value in config.parameters.items()},
            max_batch_size=config.max_batch_size or DEFAULT_MAX_BATCH_SIZE,
        )

    def has_explanation(self, name: str) -> bool:
        """Whether explanation model `name` exists for this version (built from this very
        classifier: one built from another is refused, since versions are never rewritten)."""
        existing = _existing(self.repo.root, name, self.version)
        if existing is None:
            return False
        if existing.classifier_sha256 != self.digest:
            raise IntegrityError(
                f"{name} version {self.version} exists but was built from another {self.model} "
                f"(sha256 {str(existing.classifier_sha256)[:12]}..., now {self.digest[:12]}...); "
                "versions are never overwritten: export the classifier as a new version"
            )
        return True

    def write(
        self,
        name: str,
        method: str,
        graph: onnx.ModelProto,
        compare: Parity | None,
        gradient_check: dict[str, Any],
    ) -> dict[str, Any]:
        """Self-check `graph` and write it as version `self.version` of model `name` (whole or
        not at all); the summary's figures."""
        checks = self_check(self.graph, graph, gradient_check=gradient_check)
        figures = compare(graph, method) if compare is not None else {}
        facts = {e.key: e.value for e in graph.metadata_props}
        batch = max(1, self.max_batch_size // _copies(facts))
        text = config_text(
            build_explanation_config(
                name,
                inputs=[_tensor(value) for value in graph.graph.input],
                outputs=[_tensor(value, self.labels) for value in graph.graph.output],
                max_batch_size=batch,
                parameters={**self.parameters, **_parameters(facts, self.graph)},
            )
        )
        labels = "".join(f"{label}\n" for label in self.labels)
        with VersionWriter(
            self.repo.root, name, config=text, labels=labels, version=self.version
        ) as w:
            onnx.save(graph, str(w.folder / ONNX_FILE))
            w.commit(
                explains=self.model,
                method=method,
                classifier_sha256=self.digest,
                self_check=checks,
                parity=figures,
                precision=self.precision,
                max_batch_size=batch,
                created=utc_now(),
            )
        return {
            "status": "written",
            "path": str(w.path),
            "warnings": json.loads(facts.get("warnings", "[]")),
            "self_check": checks,
            "parity": figures,
        }


def _existing(root: Path, name: str, version: int) -> Manifest | None:
    """The manifest of an explanation model's version, if that version exists."""
    folder = root / name / str(version)
    if not folder.exists():
        return None
    path = folder / MANIFEST_FILE
    if not path.is_file() or not (root / name / CONFIG_FILE).is_file():
        raise IntegrityError(
            f"{folder} exists without a manifest; remove it or export into another repository"
        )
    return Manifest.from_json(path.read_text(encoding="utf-8"), name, version)


def _copies(facts: dict[str, str]) -> int:
    """How many copies of each image the graph runs (integrated gradients: its steps;
    occlusion: the square's positions), which divides the batch the classifier allows."""
    if facts.get("cnnzoo_explanation") == "integrated-gradients":
        return int(facts["steps"])
    if facts.get("cnnzoo_explanation") == "occlusion":
        return int(facts["positions"])
    return 1


def _tensor(value: onnx.ValueInfoProto, labels: Sequence[str] = ()) -> TensorConfig:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value for d in tensor.shape.dim[1:])
    label_file = LABELS_FILE if value.name == "logits" and labels else ""
    return TensorConfig(value.name, _TRITON_TYPES[tensor.elem_type], dims, label_file)


def _parameters(facts: dict[str, str], classifier: onnx.ModelProto) -> dict[str, str]:
    """The explanation's own metadata (not the classifier's it repeats), without the per-version
    classifier sha256 (config.pbtxt is shared by all versions; the sha256 is in each version's
    model.onnx metadata and manifest)."""
    own = {e.key: e.value for e in classifier.metadata_props}
    return {
        key: value
        for key, value in facts.items()
        if key != "classifier_sha256" and own.get(key) != value
    }
