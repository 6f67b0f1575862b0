"""A Triton-layout model repository: its layout, config.pbtxt, the typed manifest, reading and
verifying versions, and writing new versions transactionally.

```
<root>/<model>/config.pbtxt              ModelConfig, protobuf text format
<root>/<model>/labels.txt                one label per line, class-index order
<root>/<model>/<version>/model.onnx      input "input" FP32 [-1,C,H,W], output "logits" FP32 [-1,K]
<root>/<model>/<version>/model.safetensors
<root>/<model>/<version>/manifest.json   sha256 of every file above, parity figures, provenance
```

A version counts only once its manifest is there: `VersionWriter` builds a version in a hidden
folder beside the others and renames it into place only when it is complete, so readers (a
server polling the repository) never see half a version. Names from outside (requests, command
lines) are validated before they touch the file system. This is the one module of the zoo that
reads or writes protobuf (config.pbtxt, with `google.protobuf.text_format`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from google.protobuf import text_format

from cnnzoo.errors import (
    AlreadyExists,
    CnnzooError,
    IntegrityError,
    InvalidInput,
    NotFound,
    quoted,
)
from cnnzoo.fileio import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file
from cnnzoo.protos import model_config_pb2
from cnnzoo.zoo.architectures import get_architecture
from cnnzoo.zoo.checkpoints import load_weights_file
from cnnzoo.zoo.preprocess import Preprocess
from cnnzoo.zoo.registry import get_entry

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "CONFIG_FILE",
    "LABELS_FILE",
    "MANIFEST_FILE",
    "ONNX_FILE",
    "WEIGHTS_FILE",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "MODEL_NAME",
    "Manifest",
    "ModelRepository",
    "VersionWriter",
    "TensorConfig",
    "build_config",
    "build_explanation_config",
    "config_text",
    "up_to_date_version",
    "validate_model_name",
]

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION = re.compile(r"^[0-9]+$")


def validate_model_name(name: str) -> str:
    """Return `name` if it is a safe model name, else raise `NotFound`."""
    if not isinstance(name, str) or not MODEL_NAME.match(name) or ".." in name:
        raise NotFound(
            f"no model named {quoted(name)} (model names match [A-Za-z0-9][A-Za-z0-9_.-]*)"
        )
    return name


def _holds(folder: Path, name: str) -> bool:
    """Whether `folder/name` is a file; True also when `folder` cannot be read (permissions, I/O
    errors), so that the folder is reported with its error rather than skipped in silence."""
    try:
        return stat.S_ISREG(os.stat(folder / name).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def _is_model_folder(folder: Path) -> bool:
    """A config.pbtxt, or (a Triton repository relying on auto-completion) a numbered version
    folder with a model.onnx."""
    if _holds(folder, CONFIG_FILE):
        return True
    try:
        return any(
            _VERSION.match(entry.name) and _holds(Path(entry.path), ONNX_FILE)
            for entry in os.scandir(folder)
        )
    except OSError:
        return True  # reported with its error when loaded


# -- config.pbtxt ---------------------------------------------------------------------------


def build_config(
    name: str,
    *,
    input_dims: tuple[int, ...],
    num_classes: int,
    parameters: Mapping[str, str],
    max_batch_size: int,
    input_dtype: str = "fp32",
) -> model_config_pb2.ModelConfig:
    """The ModelConfig of a classifier: one input of `input_dims` (no batch axis; FP32, or
    UINT8 pixels with `input_dtype="uint8"`), FP32 logits with the label file, dynamic
    batching, and `parameters` as string parameters."""
    pb = model_config_pb2
    config = pb.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    data_type = {"fp32": pb.TYPE_FP32, "uint8": pb.TYPE_UINT8}[input_dtype]
    config.input.add(name=INPUT_NAME, data_type=data_type, dims=list(input_dims))
    config.output.add(
        name=OUTPUT_NAME, data_type=pb.TYPE_FP32, dims=[num_classes], label_filename=LABELS_FILE
    )
    config.dynamic_batching.SetInParent()
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


@dataclass(frozen=True)
class TensorConfig:
    """One input or output of a ModelConfig.

    Attributes:
        name: the tensor's name in the graph.
        data_type: "FP32", "FP16", "UINT8", "INT64", ... (ModelConfig's TYPE_* without "TYPE_").
        dims: its dims without the batch axis.
        label_filename: a label file for class scores (outputs only), or "".
    """

    name: str
    data_type: str
    dims: tuple[int, ...]
    label_filename: str = ""


def build_explanation_config(
    name: str,
    *,
    inputs: Sequence[TensorConfig],
    outputs: Sequence[TensorConfig],
    max_batch_size: int,
    parameters: Mapping[str, str],
) -> model_config_pb2.ModelConfig:
    """The ModelConfig of an explanation model (`cnnzoo.interpret.graphs`): several inputs and
    outputs, every one with the batch axis (dynamic batching), and `parameters` as strings.

    Raises:
        InvalidInput: an unknown data type.
    """
    pb = model_config_pb2
    config = pb.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    for target, tensors in ((config.input, inputs), (config.output, outputs)):
        for tensor in tensors:
            try:
                data_type = pb.DataType.Value(f"TYPE_{tensor.data_type}")
            except ValueError:
                raise InvalidInput(f"{name}: unknown data type {tensor.data_type!r}") from None
            entry = target.add(name=tensor.name, data_type=data_type, dims=list(tensor.dims))
            if tensor.label_filename:
                entry.label_filename = tensor.label_filename
    config.dynamic_batching.SetInParent()
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def config_text(config: model_config_pb2.ModelConfig) -> str:
    """config.pbtxt's text for `config` (protobuf text format)."""
    return text_format.MessageToString(config)


# -- manifest.json --------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A version's manifest.json: the sha256 of each of its files, and where it came from.

    Attributes:
        model: the model's name in the repository.
        version: the version number.
        files: sha256 by path relative to the model folder (config.pbtxt, labels.txt and
            every file of the version folder except the manifest itself).
        zoo_entry: the zoo model (a preset or a run) the version was exported from.
        arch: its architecture (`cnnzoo.zoo.architectures`), so the PyTorch model can be
            rebuilt from the version alone, without the preset or run folder it came from.
        precision: "fp32" or "fp16" (the graph inside; inputs and outputs are FP32).
        trained: False for an export of a random initialisation.
        source_weights: the weights file exported, as given.
        source_weights_sha256: its sha256 (None for an untrained export).
        parity: ONNX Runtime against PyTorch (see `cnnzoo.zoo.export`).
        max_batch_size: config.pbtxt's max_batch_size at export.
        created: UTC time of the export (ISO 8601).
        explains: for an explanation model (`cnnzoo.interpret.graphs`), the classifier it
            explains (a model of the same repository, same version number).
        method: for an explanation model, its method.
        classifier_sha256: for an explanation model, the sha256 of the classifier's model.onnx
            it was built from (a classifier changed since is detected with it).
        self_check: for an explanation model, the checks it passed when written (its logits
            against the classifier's, its gradient against finite differences).
    """

    model: str
    version: int
    files: Mapping[str, str]
    zoo_entry: str | None = None
    arch: str | None = None
    precision: str = "fp32"
    trained: bool = False
    source_weights: str | None = None
    source_weights_sha256: str | None = None
    parity: Mapping[str, Any] = field(default_factory=dict)
    max_batch_size: int | None = None
    created: str | None = None
    explains: str | None = None
    method: str | None = None
    classifier_sha256: str | None = None
    self_check: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, model: str, version: int) -> Manifest:
        """Parse manifest.json of `model` version `version`; keys it does not know are ignored.

        Raises:
            IntegrityError: not JSON, no files listed, or a value of the wrong type.
        """
        where = f"manifest of {model} version {version}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise IntegrityError(f"{where} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise IntegrityError(f"{where} is not a JSON object")
        files = data.get("files")
        if not isinstance(files, dict) or not files:
            raise IntegrityError(f"{where} lists no files")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise IntegrityError(f"{where}: files must map paths to sha256 strings")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("model", model)
        values.setdefault("version", version)
        manifest = cls(**values)
        types = {"model": str, "version": int, "precision": str, "trained": bool}
        wrong = [k for k, t in types.items() if not isinstance(getattr(manifest, k), t)]
        if wrong:
            raise IntegrityError(f"{where}: {', '.join(wrong)} of the wrong type")
        return manifest


class ModelRepository:
    """A model repository folder.

    Args:
        root: the repository folder.

    Raises:
        NotFound: `root` does not exist.
        InvalidInput: `root` is not a folder.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInput(f"model repository {self.root} is a file, not a folder")
        if not self.root.is_dir():
            raise NotFound(
                f"model repository {self.root} does not exist; create it with cnnzoo export"
            )

    def __repr__(self) -> str:
        return f"ModelRepository({str(self.root)!r})"

    def models(self) -> list[str]:
        """Sorted names of the models: folders with a config.pbtxt, folders without one that
        hold a numbered version with a model.onnx (Triton completes their configuration from
        the graph; so does the server), and model folders that cannot be read (loading one then
        says why, instead of the folder going unnoticed)."""
        try:
            entries = list(self.root.iterdir())
        except OSError as err:  # unreadable (permissions), or gone since start-up
            raise InvalidInput(
                f"cannot read the model repository {self.root}: {err.strerror}; the server "
                f"needs permission to list it (running as uid {os.geteuid()})"
            ) from None
        return sorted(
            path.name
            for path in entries
            if MODEL_NAME.match(path.name) and path.is_dir() and _is_model_folder(path)
        )

    def model_dir(self, model: str) -> Path:
        folder = self.root / validate_model_name(model)
        if not folder.is_dir() or not _is_model_folder(folder):
            known = ", ".join(self.models()) or "none"
            raise NotFound(f"no model {model!r} in {self.root} (models: {known})")
        return folder

    def versions(self, model: str) -> list[int]:
        """Sorted numeric versions of `model`: folders with a manifest (written by `cnnzoo
        export`) or, in a repository laid out for Triton by other means, a model.onnx."""
        folder = self.model_dir(model)
        return sorted(
            int(path.name)
            for path in folder.iterdir()
            if _VERSION.match(path.name)
            and (_holds(path, MANIFEST_FILE) or _holds(path, ONNX_FILE))
        )

    def has_manifest(self, model: str, version: int | str) -> bool:
        """Whether the version carries a manifest.json (what `verify` checks)."""
        return (self.version_dir(model, version) / MANIFEST_FILE).is_file()

    def latest_version(self, model: str) -> int:
        versions = self.versions(model)
        if not versions:
            raise NotFound(f"model {model!r} in {self.root} has no complete version")
        return versions[-1]

    def version_dir(self, model: str, version: int | str) -> Path:
        """The folder of one version; unknown or malformed versions raise `NotFound`."""
        text = str(version)
        if not _VERSION.match(text):
            raise NotFound(f"version {version!r} of {model!r} is not a number")
        number = int(text)
        versions = self.versions(model)
        if number not in versions:
            raise NotFound(
                f"model {model!r} has no version {number} (versions: "
                f"{', '.join(map(str, versions)) or 'none'})"
            )
        return self.model_dir(model) / str(number)

    def has_config(self, model: str) -> bool:
        """Whether the model's folder has a config.pbtxt (else it is completed from the graph)."""
        return (self.model_dir(model) / CONFIG_FILE).is_file()

    def config(self, model: str) -> model_config_pb2.ModelConfig:
        """The parsed config.pbtxt; for a folder without one, an empty config that names the
        model (the server completes it from the graph, as Triton does)."""
        path = self.model_dir(model) / CONFIG_FILE
        if not path.exists():
            return model_config_pb2.ModelConfig(name=model)
        try:
            return text_format.Parse(
                path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig()
            )
        except (text_format.ParseError, UnicodeDecodeError) as err:
            raise IntegrityError(f"{path} is not a valid ModelConfig: {err}") from None

    def parameters(self, model: str) -> dict[str, str]:
        """config.pbtxt `parameters` as plain strings."""
        return {k: v.string_value for k, v in self.config(model).parameters.items()}

    def labels(self, model: str, filename: str = LABELS_FILE) -> list[str]:
        """The lines of a label file in the model's folder (config.pbtxt's `label_filename`)."""
        if not filename or Path(filename).name != filename or filename.startswith("."):
            raise IntegrityError(f"{model}: label file {filename!r} is not a file name")
        path = self.model_dir(model) / filename
        if not path.is_file():
            raise NotFound(f"{model}/{filename} is missing")
        return path.read_text(encoding="utf-8").splitlines()

    def preprocess(self, model: str) -> Preprocess:
        return Preprocess.from_parameters(self.parameters(model))

    def manifest(self, model: str, version: int | str) -> Manifest:
        """The version's manifest, parsed (not verified: see `verify`).

        Raises:
            NotFound: the version has none (a repository laid out for Triton by other means).
            IntegrityError: it is not a manifest.
        """
        path = self.version_dir(model, version) / MANIFEST_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFound(f"{model} version {version} has no {MANIFEST_FILE}") from None
        except UnicodeDecodeError as err:
            raise IntegrityError(f"{path} is not valid JSON: {err}") from None
        return Manifest.from_json(text, model, int(version))

    def verify(self, model: str, version: int | str) -> Manifest:
        """Check every sha256 the manifest records; returns the manifest.

        Raises:
            IntegrityError: a file is missing or its sha256 differs (names the file).
        """
        manifest = self.manifest(model, version)
        for relative, expected in sorted(manifest.files.items()):
            self._check_file(model, relative, expected)
        return manifest

    def _check_file(self, model: str, relative: str, expected: str) -> None:
        """Raise `IntegrityError` unless `<model>/<relative>` exists with sha256 `expected`."""
        folder = self.model_dir(model)
        path = (folder / relative).resolve()
        if folder.resolve() not in path.parents:
            raise IntegrityError(f"manifest of {model} names a file outside the model: {relative}")
        if not path.is_file():
            raise IntegrityError(f"{model}/{relative} is missing (listed in its manifest)")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"{model}/{relative} sha256 {actual[:12]}... does not match the manifest "
                f"({expected[:12]}...); re-export the model"
            )

    def torch_model(
        self, model: str, version: int | str, *, manifest: Manifest | None = None
    ) -> nn.Module:
        """The PyTorch model of one version: its architecture with its model.safetensors, in
        eval mode (for gradients, which the ONNX file cannot give).

        The architecture comes from the manifest (`arch`, with the class count of labels.txt
        and the channels of the preprocessing), so a version exported from a run folder
        rebuilds without that folder; versions exported before manifests named it rebuild
        through their zoo_entry.

        Errors name the model, version and file, never the repository's folder (the server
        sends them to its callers).

        Args:
            model: the model name.
            version: the version number.
            manifest: the version's manifest when the caller has read (and verified) it.

        Raises:
            NotFound: the version or its model.safetensors is gone.
            IntegrityError: nothing names the architecture, the weights' sha256 differs from
                the manifest's, or they do not load.
        """
        validate_model_name(model)
        if not _VERSION.match(str(version)):
            raise NotFound(f"version {version!r} of {model!r} is not a number")
        where = f"{model} version {int(version)}"
        if manifest is None:
            manifest = self.manifest(model, version)
        entry = manifest.zoo_entry or self.parameters(model).get("zoo_entry")
        if not entry:
            raise IntegrityError(
                f"{where}: neither its manifest nor config.pbtxt names a zoo_entry, so its "
                "PyTorch model cannot be rebuilt"
            )
        path = self.root / model / str(int(version)) / WEIGHTS_FILE
        try:
            if manifest.arch:
                network = get_architecture(manifest.arch).build(
                    len(self.labels(model)), self.preprocess(model).channels
                )
            else:
                network = get_entry(entry).build()
        except NotFound as err:
            raise IntegrityError(f"{where}: its model is unknown here: {err.reason}") from None
        except InvalidInput as err:
            raise IntegrityError(f"{where}: {err.reason}") from None
        if not path.is_file():
            raise NotFound(f"{where}: {WEIGHTS_FILE} is missing; re-export the version")
        # The file is read long after the version was verified (on the first explanation), so
        # its sha256 is checked again here: a changed byte would give wrong maps, not an error.
        relative = f"{int(version)}/{WEIGHTS_FILE}"
        if relative not in manifest.files:
            raise IntegrityError(f"{where}: its manifest records no sha256 for {WEIGHTS_FILE}")
        self._check_file(model, relative, manifest.files[relative])
        try:
            load_weights_file(network, path, entry)
        except CnnzooError as err:
            reason = err.reason.replace(str(path), WEIGHTS_FILE)
            raise IntegrityError(f"{where}: {WEIGHTS_FILE} does not load: {reason}") from None
        return network.eval()


# -- writing versions -----------------------------------------------------------------------


class VersionWriter:
    """Writes one new version of a model so that it appears whole or not at all.

    The version is built in a hidden folder beside the others (`<model>/.tmp-<version>-<hex>`);
    `commit` hashes its files, writes the manifest (and the model's config.pbtxt and labels.txt
    when they are new) and renames the folder to `<version>`. Leaving the `with` block without
    a commit (an error, an interrupt) removes everything the writer created::

        with VersionWriter(root, "lenet5-mnist", config=..., labels=...) as writer:
            write_files_into(writer.folder)
            manifest = writer.commit(zoo_entry="lenet5-mnist", precision="fp32", ...)

    Args:
        root: the repository folder (created when missing).
        model: the model's name.
        config: the model's config.pbtxt text.
        labels: its labels.txt text.
        version: the version to write; None means latest + 1.

    Raises:
        InvalidInput: `root` is a file; a version below 1 or below the latest.
        AlreadyExists: the version exists, or the model's config.pbtxt or labels.txt exist
            with other contents (they are shared by its versions and never change).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        model: str,
        *,
        config: str,
        labels: str,
        version: int | None = None,
    ) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInput(f"model repository {self.root} is a file, not a folder")
        self.model = validate_model_name(model)
        self.model_dir = self.root / model
        self._texts = {CONFIG_FILE: config, LABELS_FILE: labels}
        for name, text in self._texts.items():
            path = self.model_dir / name
            if path.exists() and path.read_text(encoding="utf-8") != text:
                raise AlreadyExists(
                    f"{path} exists with different contents (other settings, e.g. "
                    "--max-batch-size); export into another repository"
                )
        self.version = _next_version(self.model_dir, version)
        self.folder = self.model_dir / f".tmp-{self.version}-{uuid.uuid4().hex[:8]}"
        self._created: list[Path] = []
        self._committed = False

    def __enter__(self) -> VersionWriter:
        if not self.model_dir.exists():
            self.model_dir.mkdir(parents=True)
            self._created.append(self.model_dir)
        self.folder.mkdir()
        return self

    def commit(self, **provenance: Any) -> Manifest:
        """Write the manifest and put the version in place; `provenance` are `Manifest` fields.

        Raises:
            AlreadyExists: another writer took this version meanwhile.
        """
        files = {name: sha256_bytes(text.encode("utf-8")) for name, text in self._texts.items()}
        for path in sorted(self.folder.iterdir()):
            files[f"{self.version}/{path.name}"] = sha256_file(path)
        manifest = Manifest(model=self.model, version=self.version, files=files, **provenance)
        atomic_write_text(self.folder / MANIFEST_FILE, manifest.to_json())
        for name, text in self._texts.items():
            if not (self.model_dir / name).exists():
                atomic_write_bytes(self.model_dir / name, text.encode("utf-8"))
                self._created.append(self.model_dir / name)
        final = self.model_dir / str(self.version)
        try:
            os.rename(self.folder, final)  # fails if another export took this version meanwhile
        except OSError:
            raise AlreadyExists(f"{final} appeared during the export; not overwriting it") from None
        self._committed = True
        return manifest

    @property
    def path(self) -> Path:
        """Where the version is once committed."""
        return self.model_dir / str(self.version)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._committed:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        for path in reversed(self._created):
            if path.is_dir():
                if not any(path.iterdir()):
                    path.rmdir()
            else:
                path.unlink(missing_ok=True)


def _next_version(model_dir: Path, requested: int | None) -> int:
    """latest + 1, or `requested` when it is above the latest (the server serves the latest)."""
    if requested is not None and requested < 1:
        raise InvalidInput(f"--version must be >= 1, got {requested}")
    existing = (
        sorted(int(p.name) for p in model_dir.iterdir() if _VERSION.match(p.name))
        if model_dir.is_dir()
        else []
    )
    if requested is None:
        return (existing[-1] + 1) if existing else 1
    if existing and requested <= existing[-1]:
        latest = existing[-1]
        error = AlreadyExists if requested in existing else InvalidInput
        raise error(
            f"--version {requested}: {model_dir.name} already has version {latest}; versions "
            f"only increase and are never overwritten (omit --version to write {latest + 1})"
        )
    return requested


def up_to_date_version(
    root: Path,
    model: str,
    *,
    source_sha256: str | None,
    precision: str,
    config: str,
    labels: str,
) -> int | None:
    """The model's latest version if it holds exactly this export, else None.

    Up to date means: the latest version's manifest records the same `source_weights_sha256`
    (None for an untrained export: a re-export would only be another random initialisation),
    the same precision, and the sha256 of the same config.pbtxt and labels.txt; and every file
    still matches the sha256 its manifest records.

    Args:
        root: the model repository folder (may not exist yet).
        model: the model's name.
        source_sha256: sha256 of the weights file to export, None for random init.
        precision: "fp32" or "fp16".
        config: the config.pbtxt text this export would write.
        labels: the labels.txt text this export would write.

    Returns:
        The version number, or None when there is no version or the latest one differs.
    """
    if not (root / model / CONFIG_FILE).is_file():
        return None
    repo = ModelRepository(root)
    versions = repo.versions(model)
    if not versions:
        return None
    latest = versions[-1]
    try:
        manifest = repo.verify(model, latest)
    except (IntegrityError, NotFound):
        return None  # damaged or not ours: export a sound version instead of pointing at this one
    same = (
        manifest.source_weights_sha256 == source_sha256
        and manifest.precision == precision
        and manifest.files.get(CONFIG_FILE) == sha256_bytes(config.encode("utf-8"))
        and manifest.files.get(LABELS_FILE) == sha256_bytes(labels.encode("utf-8"))
    )
    return latest if same else None
