"""Read a Triton-layout model repository written by `cnnzoo export`.

```
<root>/<model>/config.pbtxt              ModelConfig, protobuf text format
<root>/<model>/labels.txt                one label per line, class-index order
<root>/<model>/<version>/model.onnx      input "input" FP32 [-1,C,H,W], output "logits" FP32 [-1,K]
<root>/<model>/<version>/model.safetensors
<root>/<model>/<version>/manifest.json   sha256 of every file above, parity figures, provenance
```

A version counts only once its manifest is there (versions appear atomically, by rename).
Names from outside (requests, command lines) are validated before they touch the file system.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.errors import CnnzooError, IntegrityError, InvalidInput, NotFound
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.preprocess import Preprocess

if TYPE_CHECKING:
    from torch import nn

    from cnnzoo.protos import model_config_pb2

__all__ = [
    "CONFIG_FILE",
    "LABELS_FILE",
    "MANIFEST_FILE",
    "ONNX_FILE",
    "WEIGHTS_FILE",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ModelRepository",
    "validate_model_name",
]

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION = re.compile(r"^[0-9]+$")


def validate_model_name(name: str) -> str:
    """Return `name` if it is a safe model name, else raise `NotFound`."""
    if not isinstance(name, str) or not _MODEL_NAME.match(name) or ".." in name:
        raise NotFound(f"no model named {name!r} (model names match [A-Za-z0-9][A-Za-z0-9_.-]*)")
    return name


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
        """Sorted names of the models that have a config.pbtxt."""
        return sorted(
            path.name
            for path in self.root.iterdir()
            if path.is_dir() and _MODEL_NAME.match(path.name) and (path / CONFIG_FILE).is_file()
        )

    def model_dir(self, model: str) -> Path:
        folder = self.root / validate_model_name(model)
        if not (folder / CONFIG_FILE).is_file():
            known = ", ".join(self.models()) or "none"
            raise NotFound(f"no model {model!r} in {self.root} (models: {known})")
        return folder

    def versions(self, model: str) -> list[int]:
        """Sorted numeric versions of `model` that have a manifest."""
        folder = self.model_dir(model)
        return sorted(
            int(path.name)
            for path in folder.iterdir()
            if _VERSION.match(path.name) and (path / MANIFEST_FILE).is_file()
        )

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

    def config(self, model: str) -> model_config_pb2.ModelConfig:
        """The parsed config.pbtxt."""
        from google.protobuf import text_format

        from cnnzoo.protos import model_config_pb2

        path = self.model_dir(model) / CONFIG_FILE
        try:
            return text_format.Parse(
                path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig()
            )
        except (text_format.ParseError, UnicodeDecodeError) as err:
            raise IntegrityError(f"{path} is not a valid ModelConfig: {err}") from None

    def parameters(self, model: str) -> dict[str, str]:
        """config.pbtxt `parameters` as plain strings."""
        return {k: v.string_value for k, v in self.config(model).parameters.items()}

    def labels(self, model: str) -> list[str]:
        path = self.model_dir(model) / LABELS_FILE
        if not path.is_file():
            raise NotFound(f"{path} is missing")
        return path.read_text(encoding="utf-8").splitlines()

    def preprocess(self, model: str) -> Preprocess:
        return Preprocess.from_parameters(self.parameters(model))

    def manifest(self, model: str, version: int | str) -> dict[str, Any]:
        path = self.version_dir(model, version) / MANIFEST_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise IntegrityError(f"{path} is not valid JSON: {err}") from None

    def verify(self, model: str, version: int | str) -> dict[str, Any]:
        """Check every sha256 the manifest records; returns the manifest.

        Raises:
            IntegrityError: a file is missing or its sha256 differs (names the file).
        """
        manifest = self.manifest(model, version)
        folder = self.model_dir(model)
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise IntegrityError(f"manifest of {model} version {version} lists no files")
        for relative, expected in sorted(files.items()):
            path = (folder / relative).resolve()
            if folder.resolve() not in path.parents:
                raise IntegrityError(
                    f"manifest of {model} names a file outside the model: {relative}"
                )
            if not path.is_file():
                raise IntegrityError(f"{model}/{relative} is missing (listed in its manifest)")
            actual = sha256_file(path)
            if actual != expected:
                raise IntegrityError(
                    f"{model}/{relative} sha256 {actual[:12]}... does not match the manifest "
                    f"({str(expected)[:12]}...); re-export the model"
                )
        return manifest

    def torch_model(
        self, model: str, version: int | str, *, manifest: dict[str, Any] | None = None
    ) -> nn.Module:
        """The PyTorch model of one version: its zoo entry with its model.safetensors, in eval
        mode (for gradients, which the ONNX file cannot give).

        Errors name the model, version and file, never the repository's folder (the server
        sends them to its callers).

        Args:
            model: the model name.
            version: the version number.
            manifest: the version's manifest when the caller has read (and verified) it.

        Raises:
            NotFound: the version or its model.safetensors is gone.
            IntegrityError: nothing names the zoo entry, or the weights do not load.
        """
        from cnnzoo import zoo

        validate_model_name(model)
        if not _VERSION.match(str(version)):
            raise NotFound(f"version {version!r} of {model!r} is not a number")
        where = f"{model} version {int(version)}"
        if manifest is None:
            manifest = self.manifest(model, version)
        entry = manifest.get("zoo_entry") or self.parameters(model).get("zoo_entry")
        if not entry:
            raise IntegrityError(
                f"{where}: neither its manifest nor config.pbtxt names a zoo_entry, so its "
                "PyTorch model cannot be rebuilt"
            )
        try:
            zoo.get_entry(entry)
        except NotFound as err:
            raise IntegrityError(f"{where}: its zoo_entry is unknown here: {err.reason}") from None
        path = self.root / model / str(int(version)) / WEIGHTS_FILE
        if not path.is_file():
            raise NotFound(f"{where}: {WEIGHTS_FILE} is missing; re-export the version")
        try:
            return zoo.build_model(entry, weights=path)
        except CnnzooError as err:
            reason = err.reason.replace(str(path), WEIGHTS_FILE)
            raise IntegrityError(f"{where}: {WEIGHTS_FILE} does not load: {reason}") from None
