"""Job files: read a TOML or JSON file into a checked `JobSpec`.

Checking happens in two steps, both before any work: `read_job` checks the file against the
schema (types, allowed keys and values); `validate_job` checks it against the world (the model,
weights, layers, channels, dataset, checkpoint folder and image indices exist). Each problem is
one `CnnzooError` with a message that names the file and the fix.

Relative paths in a job file (weights, dataset folders, checkpoint folders, output) are
relative to the job file's folder.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnzoo.errors import JobFileError, LayerNotFound

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ANALYSES",
    "AnalysisSpec",
    "DatasetSpec",
    "JobSpec",
    "load_job",
    "read_job",
    "validate_job",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PROJECTIONS = ("deconvnet", "guided-backprop", "gradient")
# `cnnzoo.interpret.explain.METHODS`, spelled out so that reading a job file does not import captum
# (tests/interpret/test_jobs.py checks that the two agree).
ATTRIBUTION_METHODS = ("gradient", "deconvnet", "guided-backprop", "occlusion")
ZF_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)  # the epochs of ZF Fig. 4

# Per analysis kind: option -> default (None: chosen from the model at validation time).
ANALYSES: dict[str, dict[str, Any]] = {
    "max-activations": {"layers": None, "channels": 8, "top_k": 9, "projection": "deconvnet"},
    "filters": {"layer": None},
    "evolution": {
        "checkpoints": None,
        "layer": None,
        "channels": 6,
        "epochs": None,
        "subset": 2000,
        "projection": "deconvnet",
    },
    "attributions": {
        "images": [0, 1, 2, 3],
        "methods": ["gradient", "deconvnet", "guided-backprop", "occlusion"],
    },
    "occlusion": {"images": [0, 1], "layer": None, "window": None, "stride": None},
    "randomisation": {
        "images": [0, 1, 2, 3, 4, 5, 6, 7],
        "layers": None,
        "methods": ["gradient", "deconvnet", "guided-backprop"],
        "seed": 0,
    },
}
_TOP_KEYS = {"name", "model", "weights", "output", "dataset", "analyses", "device"}
_DATASET_KEYS = {"name", "split", "subset", "batch_size", "num_workers"}
_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DatasetSpec:
    """Which images: a dataset name or ImageFolder path, a split, and optionally the first
    `subset` images. `batch_size` fixes the scan's batches (see `cnnzoo.interpret.scan`)."""

    name: str
    split: str = "test"
    subset: int | None = None
    batch_size: int = 256
    num_workers: int = 0


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis: its kind, a stable id (`NN-kind`, used for file and state names) and its
    options with every default filled in."""

    kind: str
    id: str
    options: dict[str, Any]


@dataclass(frozen=True)
class JobSpec:
    """A checked job file."""

    name: str
    model: str
    weights: str | None
    dataset: DatasetSpec
    analyses: tuple[AnalysisSpec, ...]
    output: Path | None
    device: str
    source: Path = field(compare=False)

    def resolve(self, value: str) -> Path:
        """A path from the job file, relative to the job file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.source.parent / path

    def weights_file(self, entry: Any) -> Path | None:
        """The weights file to load: the zoo's shipped file for "default", `model.safetensors`
        inside a folder (a `cnnzoo train --out` model folder), the file itself, or None."""
        if self.weights is None:
            return None
        if self.weights == "default":
            return entry.weights_file
        path = self.resolve(self.weights)
        return path / "model.safetensors" if path.is_dir() else path

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
            "analyses": [{"kind": a.kind, "id": a.id, **a.options} for a in self.analyses],
        }


def _fail(source: Path, message: str) -> JobFileError:
    return JobFileError(f"{source.name}: {message}")


def _expect(source: Path, where: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _fail(source, f"{where} must be {what}, got {value!r}")
    if not isinstance(value, kind):
        raise _fail(source, f"{where} must be {what}, got {value!r}")
    return value


def _unknown_keys(source: Path, where: str, given: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise _fail(
            source,
            f"unknown key(s) {', '.join(unknown)} in {where}; "
            f"allowed: {', '.join(sorted(allowed))}",
        )


def _int_list(source: Path, where: str, value: Any) -> list[int]:
    items = _expect(source, where, value, list, "a list of integers")
    if not items:
        raise _fail(source, f"{where} must list at least one integer")
    for item in items:
        _expect(source, where, item, int, "a list of integers")
        if item < 0:
            raise _fail(source, f"{where} must not be negative, got {item}")
    return list(items)


def _positive(source: Path, where: str, value: Any) -> int:
    _expect(source, where, value, int, "a positive integer")
    if value < 1:
        raise _fail(source, f"{where} must be a positive integer, got {value}")
    return value


def _count(source: Path, where: str, value: Any) -> int:
    _expect(source, where, value, int, "an integer >= 0")
    if value < 0:
        raise _fail(source, f"{where} must be an integer >= 0, got {value}")
    return value


def _read_raw(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise JobFileError(f"job file {path} does not exist")
    text = path.read_bytes()
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text.decode("utf-8"))
        if path.suffix == ".json":
            data = json.loads(text.decode("utf-8"))
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


def _analysis(source: Path, index: int, raw: Any) -> AnalysisSpec:
    where = f"analyses[{index}]"
    _expect(source, where, raw, dict, "a table with a `kind`")
    kind = raw.get("kind")
    if kind not in ANALYSES:
        raise _fail(source, f"{where}.kind must be one of {', '.join(ANALYSES)}, got {kind!r}")
    defaults = ANALYSES[kind]
    _unknown_keys(source, where, raw, {"kind", *defaults})
    options = {**defaults, **{k: v for k, v in raw.items() if k != "kind"}}
    for key, value in options.items():
        at = f"{where}.{key}"
        if value is None:
            continue
        if key in ("layer", "checkpoints"):
            _expect(source, at, value, str, "a string")
        elif key == "layers":
            _expect(source, at, value, list, "a list of layer names")
            if not value:
                raise _fail(source, f"{at} must list at least one layer (or be left out)")
            for item in value:
                _expect(source, at, item, str, "a list of layer names")
        elif key == "channels":
            if isinstance(value, list):
                _int_list(source, at, value)
            else:
                _positive(source, at, value)
        elif key == "seed":
            _expect(source, at, value, int, "an integer")
        elif key in ("top_k", "window", "stride", "subset"):
            _positive(source, at, value)
        elif key in ("images", "epochs"):
            _int_list(source, at, value)
        elif key == "projection":
            if value not in PROJECTIONS:
                raise _fail(source, f"{at} must be one of {', '.join(PROJECTIONS)}, got {value!r}")
        elif key == "methods":
            # randomisation compares the rule-based maps only
            allowed = PROJECTIONS if kind == "randomisation" else ATTRIBUTION_METHODS
            _expect(source, at, value, list, "a list of methods")
            bad = [m for m in value if m not in allowed]
            if bad or not value:
                raise _fail(
                    source, f"{at} must list methods from {', '.join(allowed)}, got {value!r}"
                )
    return AnalysisSpec(kind=kind, id=f"{index + 1:02d}-{kind}", options=options)


def read_job(path: str | Path) -> JobSpec:
    """Parse a job file and check it against the schema (nothing outside the file is looked at).

    Raises:
        JobFileError: unreadable or malformed file, with the offending key.
    """
    source = Path(path).resolve()
    raw = _read_raw(source)
    _unknown_keys(source, "the job", raw, _TOP_KEYS)
    name = raw.get("name", source.stem)
    _expect(source, "name", name, str, "a string")
    if not _NAME.match(name):
        raise _fail(source, f"name {name!r} must match [A-Za-z0-9][A-Za-z0-9_.-]*")
    if "model" not in raw:
        raise _fail(source, "missing `model` (a zoo entry, see `cnnzoo list`)")
    model = _expect(source, "model", raw["model"], str, "a zoo entry name")
    weights = raw.get("weights", "default")
    _expect(source, "weights", weights, str, 'a file or model folder, "default" or "none"')
    dataset_raw = raw.get("dataset")
    if dataset_raw is None:
        raise _fail(
            source, "missing [dataset] table (name = mnist | cifar10 | imagenet | a folder)"
        )
    _expect(source, "dataset", dataset_raw, dict, "a table")
    _unknown_keys(source, "[dataset]", dataset_raw, _DATASET_KEYS)
    if "name" not in dataset_raw:
        raise _fail(
            source, "missing dataset.name (mnist | cifar10 | imagenet | an ImageFolder path)"
        )
    dataset = DatasetSpec(
        name=_expect(source, "dataset.name", dataset_raw["name"], str, "a string"),
        split=_expect(source, "dataset.split", dataset_raw.get("split", "test"), str, "a string"),
        subset=(
            _positive(source, "dataset.subset", dataset_raw["subset"])
            if dataset_raw.get("subset") is not None
            else None
        ),
        batch_size=_positive(source, "dataset.batch_size", dataset_raw.get("batch_size", 256)),
        num_workers=_count(source, "dataset.num_workers", dataset_raw.get("num_workers", 0)),
    )
    analyses_raw = raw.get("analyses")
    if not analyses_raw:
        raise _fail(source, f"no [[analyses]]; add at least one (kinds: {', '.join(ANALYSES)})")
    _expect(source, "analyses", analyses_raw, list, "an array of tables ([[analyses]])")
    analyses = tuple(_analysis(source, i, a) for i, a in enumerate(analyses_raw))
    output = raw.get("output")
    if output is not None:
        _expect(source, "output", output, str, "a folder path")
    device = raw.get("device", "auto")
    if device not in _DEVICES:
        raise _fail(source, f"device must be one of {', '.join(_DEVICES)}, got {device!r}")
    spec = JobSpec(
        name=name,
        model=model,
        weights=None if weights == "none" else weights,
        dataset=dataset,
        analyses=analyses,
        output=None,
        device=device,
        source=source,
    )
    if output is not None:
        spec = JobSpec(**{**spec.__dict__, "output": spec.resolve(output)})
    return spec


# -- validation against the model, the data and the files ----------------------------------


def _sample(count: int, total: int) -> list[int]:
    """`count` channels spread evenly over `total` (all of them when count >= total)."""
    if count >= total:
        return list(range(total))
    return sorted({(i * total) // count for i in range(count)})


def _channels(source: Path, where: str, value: Any, total: int) -> list[int]:
    if isinstance(value, list):
        bad = [c for c in value if c >= total]
        if bad:
            raise _fail(source, f"{where}: channel(s) {bad} out of range; the layer has {total}")
        return list(dict.fromkeys(value))
    return _sample(int(value), total)


def validate_job(spec: JobSpec, data_dir: str | None = None) -> JobSpec:
    """Check the job against the zoo, the files and the data; fill in model-dependent defaults
    (layers, channels, epochs). Builds the model without weights and opens the dataset, nothing
    else.

    Raises:
        NotFound: unknown model, missing weights file or checkpoint folder.
        LayerNotFound: unknown layer (lists the valid layer names).
        DatasetNotFound: the dataset is missing.
        JobFileError: out-of-range channels or image indices, an occlusion square larger than
            the model's input, unusable layers.
        InvalidInput: evolution checkpoints that do not fit the model.
    """
    from cnnzoo import zoo
    from cnnzoo.errors import CnnzooError, NotFound
    from cnnzoo.interpret.layers import describe_layers
    from cnnzoo.zoo.checkpoints import list_epochs
    from cnnzoo.zoo.datasets import get_dataset

    source = spec.source
    entry = zoo.get_entry(spec.model)  # NotFound lists the zoo's names
    if spec.weights == "default":
        if entry.weights_file is None:
            raise NotFound(
                f"{source.name}: {spec.model} ships no weights; set weights to a file or "
                '"none" (random init)'
            )
    else:
        weights_file = spec.weights_file(entry)
        if weights_file is not None and not weights_file.is_file():
            raise NotFound(f"{source.name}: weights file {weights_file} does not exist")
    model = zoo.build_model(spec.model)
    infos = {info.name: info for info in describe_layers(model, tuple(entry.input_shape))}
    spatial = [
        name for name, info in infos.items() if info.selectable and info.receptive_field is not None
    ]
    convs = [name for name, info in infos.items() if info.kind == "Conv2d" and info.selectable]

    def layer(where: str, name: str, need_field: bool = True) -> str:
        valid = spatial if need_field else [n for n, i in infos.items() if i.selectable]
        if name not in valid:
            raise LayerNotFound(
                f"{source.name}: {where}: unknown or unusable layer {name!r}; "
                f"valid layers: {', '.join(valid)}"
            )
        return name

    dataset_name = spec.dataset.name
    if dataset_name not in ("mnist", "cifar10", "imagenet"):
        dataset_name = str(spec.resolve(dataset_name))
    dataset = get_dataset(dataset_name, spec.dataset.split, data_dir=data_dir)  # DatasetNotFound
    size = len(dataset) if spec.dataset.subset is None else min(spec.dataset.subset, len(dataset))
    if size == 0:
        raise JobFileError(f"{source.name}: dataset {spec.dataset.name} has no images")

    analyses = []
    for analysis in spec.analyses:
        opts = dict(analysis.options)
        where = f"analyses[{int(analysis.id[:2]) - 1}]"
        if analysis.kind == "max-activations":
            names = opts["layers"] if opts["layers"] is not None else convs
            table = {}
            for name in names:
                layer(f"{where}.layers", name)
                table[name] = _channels(
                    source, f"{where}.channels", opts["channels"], infos[name].output_shape[0]
                )
            opts["layers"] = list(names)
            opts["channels"] = table
        elif analysis.kind == "filters":
            opts["layer"] = layer(f"{where}.layer", opts["layer"] or convs[0], need_field=False)
            if infos[opts["layer"]].kind != "Conv2d":
                raise JobFileError(f"{source.name}: {where}.layer must be a Conv2d layer")
        elif analysis.kind == "evolution":
            folder = opts["checkpoints"]
            path = spec.resolve(folder) if folder else entry.weights_dir
            epochs = dict(list_epochs(path)) if path is not None else {}
            if not epochs:
                raise NotFound(
                    f"{source.name}: {where}.checkpoints: no epoch_NNN.safetensors under {path}; "
                    "point it at a `cnnzoo train` output folder"
                )
            wanted = opts["epochs"] or [e for e in ZF_EPOCHS if e in epochs] or sorted(epochs)
            missing = [e for e in wanted if e not in epochs]
            if missing:
                raise JobFileError(
                    f"{source.name}: {where}.epochs {missing} not saved; "
                    f"available: {sorted(epochs)}"
                )
            try:  # the architecture must fit (the epochs of one training run share it)
                zoo.build_model(spec.model, weights=epochs[wanted[0]])
            except CnnzooError as err:
                raise type(err)(f"{source.name}: {where}.checkpoints: {err.reason}") from None
            opts["checkpoints"] = str(path)
            opts["epochs"] = list(wanted)
            opts["layer"] = layer(f"{where}.layer", opts["layer"] or convs[-1])
            opts["channels"] = _channels(
                source, f"{where}.channels", opts["channels"], infos[opts["layer"]].output_shape[0]
            )
        elif analysis.kind == "randomisation":
            weighted = [
                name
                for name, info in infos.items()
                if info.kind in ("Conv2d", "Linear") and info.selectable
            ]
            names = opts["layers"] if opts["layers"] is not None else weighted[::-1]
            for name in names:
                if name not in weighted:
                    raise LayerNotFound(
                        f"{source.name}: {where}.layers: {name!r} is not a convolution or linear "
                        f"layer; valid layers: {', '.join(weighted)}"
                    )
            opts["layers"] = list(names)
        if analysis.kind in ("attributions", "occlusion", "randomisation"):
            bad = [i for i in opts["images"] if i >= size]
            if bad:
                raise JobFileError(
                    f"{source.name}: {where}.images {bad} out of range; "
                    f"the dataset has {size} images"
                )
            if analysis.kind == "occlusion":
                opts["layer"] = layer(
                    f"{where}.layer", opts["layer"] or convs[-1], need_field=False
                )
                if len(infos[opts["layer"]].output_shape) != 3:
                    raise JobFileError(
                        f"{source.name}: {where}.layer {opts['layer']!r} has no feature maps "
                        f"to track; pick a convolution, e.g. {convs[-1]}"
                    )
                side = min(entry.input_shape[1:])
                for key in ("window", "stride"):
                    if opts[key] is not None and opts[key] > side:
                        raise JobFileError(
                            f"{source.name}: {where}.{key} = {opts[key]} exceeds the "
                            f"{spec.model} input of {side} px; use at most {side}"
                        )
        analyses.append(AnalysisSpec(kind=analysis.kind, id=analysis.id, options=opts))
    return JobSpec(**{**spec.__dict__, "analyses": tuple(analyses)})


def load_job(path: str | Path, data_dir: str | None = None) -> JobSpec:
    """`read_job` then `validate_job`."""
    return validate_job(read_job(path), data_dir=data_dir)
