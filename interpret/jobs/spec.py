"""Job files: read a TOML or JSON file into a checked job.

Checking happens in two steps, both before any work: `read_job` checks the file against the
schema (types, allowed keys and values; each analysis's table becomes its kind's typed options,
see `cnnzoo.interpret.jobs.registry`); `load_job` then opens the job's world once (the model
with its weights, the dataset, the layer table; see `cnnzoo.interpret.jobs.world`) and resolves
every analysis against it (layers, channels, image indices, checkpoints). Each problem is one
`CnnzooError` whose message names the file, the analysis and the key.

Relative paths in a job file (weights, dataset folders, checkpoint folders) are relative to the
job file's folder; its `output` is a folder inside the output root (the working folder, or
`--output-root`), so a job file cannot make a run write anywhere else.

Example::

    name = "lenet5-digits"
    model = "lenet5-mnist"
    weights = "default"

    [dataset]
    name = "../digits"          # mnist | cifar10 | imagenet | an ImageFolder path

    [[analyses]]
    kind = "max-activations"    # ZF Fig. 2
    layers = ["features.c1", "features.c3"]
    channels = 6
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cnnzoo.errors import JobFileError
from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.limits import (
    MAX_ANALYSES,
    MAX_BATCH_BYTES,
    MAX_JOB_FILE_BYTES,
    MAX_WORKERS,
    at_most,
    batch_limit,
)
from cnnzoo.interpret.jobs.options import OptionError, count, positive, text
from cnnzoo.interpret.jobs.registry import KINDS
from cnnzoo.interpret.jobs.world import DatasetSpec, World, open_world
from cnnzoo.zoo.datasets import DATASETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DatasetSpec", "Job", "JobSpec", "load_job", "read_job", "validate_job"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOP_KEYS = {"name", "model", "weights", "output", "dataset", "analyses", "device"}
_DATASET_KEYS = {"name", "split", "subset", "batch_size", "num_workers"}
_DEVICES = ("auto", "cpu", "cuda")
_DATASET_NAMES = " | ".join(DATASETS)


def _workers(value: Any) -> int:
    number = count(value)
    if number > MAX_WORKERS:
        raise OptionError(f"must be at most {MAX_WORKERS}, got {number}")
    return number


def inside_the_output_root(value: Any) -> Path:
    """A relative folder without '..': job files may not write outside the output root (the
    working folder, or `--output-root`)."""
    path = Path(text(value))
    if not value or path.is_absolute() or value.startswith("~") or ".." in path.parts:
        raise OptionError(
            f"must be a folder inside the output root (the working folder or --output-root): "
            f"relative, without '..'; got {value!r}"
        )
    return path


@dataclass(frozen=True)
class JobSpec:
    """A job file, checked against the schema.

    Attributes:
        name: the job's name (the default output folder's name).
        model: the zoo entry.
        weights: "default", a weights file or model folder, or None (random initialisation).
        dataset: the images.
        analyses: one object per `[[analyses]]` table, of its kind's class.
        output: the output folder the file names, relative to the output root (the working
            folder, or `--output-root`); None: `out/<name>`.
        device: auto | cpu | cuda.
        source: the job file.
    """

    name: str
    model: str
    weights: str | None
    dataset: DatasetSpec
    analyses: tuple[Analysis[Any], ...]
    output: Path | None
    device: str
    source: Path = field(compare=False)

    def open_world(self, data_dir: str | None = None) -> World:
        """Open the model, weights and dataset this job names (see `open_world`)."""
        return open_world(
            self.model,
            self.weights,
            self.dataset,
            self.source.parent,
            self.source.name,
            data_dir=data_dir,
        )

    def to_dict(self) -> dict[str, Any]:
        """What the job asks for (for the manifest and the resume fingerprint)."""
        return {
            "name": self.name,
            "model": self.model,
            "weights": self.weights,
            "dataset": {
                "name": self.dataset.name,
                "split": self.dataset.split,
                "subset": self.dataset.subset,
                "batch_size": self.dataset.batch_size,
            },
            "analyses": [analysis.to_dict() for analysis in self.analyses],
        }


@dataclass
class Job:
    """A job ready to run: its spec, every analysis resolved against its opened world."""

    spec: JobSpec
    world: World


def _fail(source: Path, message: str) -> JobFileError:
    return JobFileError(f"{source.name}: {message}")


def _value(source: Path, where: str, value: Any, check: Any) -> Any:
    try:
        return check(value)
    except OptionError as err:
        raise _fail(source, f"{where} {err}") from None


def _unknown_keys(source: Path, where: str, given: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise _fail(
            source,
            f"unknown key(s) {', '.join(unknown)} in {where}; "
            f"allowed: {', '.join(sorted(allowed))}",
        )


def _read_raw(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise JobFileError(f"job file {path} does not exist")
    if path.stat().st_size > MAX_JOB_FILE_BYTES:
        raise _fail(path, f"a job file is at most {MAX_JOB_FILE_BYTES} bytes; this one is larger")
    text_bytes = path.read_bytes()
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text_bytes.decode("utf-8"))
        if path.suffix == ".json":
            data = json.loads(text_bytes.decode("utf-8"))
            if not isinstance(data, dict):
                raise _fail(path, "the top level must be an object")
            return data
    except tomllib.TOMLDecodeError as err:
        raise _fail(path, f"not valid TOML: {err}") from None
    except json.JSONDecodeError as err:
        raise _fail(path, f"not valid JSON: {err}") from None
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text") from None
    raise JobFileError(f"{path.name}: job files end in .toml or .json")


def _analysis(source: Path, index: int, raw: Any) -> Analysis[Any]:
    where = f"analyses[{index}]"
    if not isinstance(raw, dict):
        raise _fail(source, f"{where} must be a table with a `kind`, got {raw!r}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _fail(source, f"{where}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return KINDS[kind].parse(index, raw, source.name)


def _dataset(source: Path, raw: Any) -> DatasetSpec:
    if raw is None:
        raise _fail(source, f"missing [dataset] table (name = {_DATASET_NAMES} | a folder)")
    if not isinstance(raw, dict):
        raise _fail(source, f"dataset must be a table, got {raw!r}")
    _unknown_keys(source, "[dataset]", raw, _DATASET_KEYS)
    if "name" not in raw:
        raise _fail(source, f"missing dataset.name ({_DATASET_NAMES} | an ImageFolder path)")
    subset = raw.get("subset")
    return DatasetSpec(
        name=_value(source, "dataset.name", raw["name"], text),
        split=_value(source, "dataset.split", raw.get("split", "test"), text),
        subset=None if subset is None else _value(source, "dataset.subset", subset, positive),
        batch_size=_value(source, "dataset.batch_size", raw.get("batch_size", 256), positive),
        num_workers=_value(source, "dataset.num_workers", raw.get("num_workers", 0), _workers),
    )


def read_job(path: str | Path) -> JobSpec:
    """Parse a job file and check it against the schema (nothing outside the file is looked at).

    Raises:
        JobFileError: unreadable or malformed file, with the offending key.
    """
    source = Path(path).resolve()
    raw = _read_raw(source)
    _unknown_keys(source, "the job", raw, _TOP_KEYS)
    name = _value(source, "name", raw.get("name", source.stem), text)
    if not _NAME.match(name):
        raise _fail(source, f"name {name!r} must match [A-Za-z0-9][A-Za-z0-9_.-]*")
    if "model" not in raw:
        raise _fail(source, "missing `model` (a zoo entry, see `cnnzoo list`)")
    model = _value(source, "model", raw["model"], text)
    weights = raw.get("weights", "default")
    if not isinstance(weights, str):
        raise _fail(
            source, f'weights must be a file or model folder, "default" or "none", got {weights!r}'
        )
    dataset = _dataset(source, raw.get("dataset"))
    analyses_raw = raw.get("analyses")
    if not analyses_raw:
        raise _fail(source, f"no [[analyses]]; add at least one (kinds: {', '.join(KINDS)})")
    if not isinstance(analyses_raw, list):
        raise _fail(
            source, f"analyses must be an array of tables ([[analyses]]), got {analyses_raw!r}"
        )
    if len(analyses_raw) > MAX_ANALYSES:
        raise _fail(source, f"{len(analyses_raw)} analyses; a job has at most {MAX_ANALYSES}")
    analyses = tuple(_analysis(source, i, a) for i, a in enumerate(analyses_raw))
    output = raw.get("output")
    if output is not None:
        output = _value(source, "output", output, inside_the_output_root)
    device = raw.get("device", "auto")
    if device not in _DEVICES:
        raise _fail(source, f"device must be one of {', '.join(_DEVICES)}, got {device!r}")
    return JobSpec(
        name=name,
        model=model,
        weights=None if weights == "none" else weights,
        dataset=dataset,
        analyses=analyses,
        output=output,
        device=device,
        source=source,
    )


def validate_job(spec: JobSpec, world: World) -> JobSpec:
    """`spec` with every analysis resolved against `world` (model-dependent defaults filled in:
    layers, channels, epochs; names and bounds checked).

    Raises:
        NotFound: a missing checkpoint folder.
        LayerNotFound: unknown or unusable layer (lists the valid layer names).
        JobFileError: out-of-range channels or image indices, an occlusion square larger than
            the model's input, unusable layers.
        InvalidInput: evolution checkpoints that do not fit the model.
    """
    limit = batch_limit(tuple(world.entry.input_shape))
    at_most(
        spec.source.name,
        "dataset.batch_size",
        spec.dataset.batch_size,
        limit,
        f"{limit} images of {world.entry.name}'s input make {MAX_BATCH_BYTES >> 20} MiB",
    )
    return replace(spec, analyses=tuple(analysis.resolve(world) for analysis in spec.analyses))


def load_job(path: str | Path, data_dir: str | None = None) -> Job:
    """`read_job`, open the job's world, `validate_job`: a job ready for `run_job`.

    Raises:
        JobFileError: see `read_job` and `validate_job`.
        NotFound: unknown model, missing weights file or checkpoint folder.
        DatasetNotFound: the dataset is missing.
    """
    spec = read_job(path)
    world = spec.open_world(data_dir)
    return Job(spec=validate_job(spec, world), world=world)
