"""Export zoo models into a Triton-layout model repository of parity-checked ONNX files.

Each export builds the new version in a hidden temporary folder beside the others
(`<repo>/<model>/.tmp-<version>-<random>`): the ONNX graph (torch.onnx's `torch.export`-based
exporter, one self-contained file, dynamic batch axis), the `.safetensors` weights, the parity
check and the manifest. Only when everything passed is the folder renamed to `<version>`; a
failure removes it, and anything this export created, so no half-written version is ever seen.

With `skip_unchanged`, an export whose result the repository already holds writes nothing: the
latest version counts as up to date when its manifest records the same source weights (sha256),
the same precision and the same config.pbtxt and labels.txt, and its files still match their
recorded sha256 (a damaged latest version is replaced by a new one, not kept).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.errors import AlreadyExists, CnnzooError, DatasetNotFound, IntegrityError, InvalidInput
from cnnzoo.fileio import atomic_write_bytes, sha256_bytes, sha256_file
from cnnzoo.zoo._registry import ZooEntry, get_entry, list_models
from cnnzoo.zoo.card import utc_now
from cnnzoo.zoo.repository import (
    CONFIG_FILE,
    INPUT_NAME,
    LABELS_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    OUTPUT_NAME,
    WEIGHTS_FILE,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnzoo.protos import model_config_pb2

__all__ = [
    "ExportOptions",
    "FP32_TOLERANCE",
    "build_config",
    "export_model",
    "models_to_export",
    "onnx_metadata",
    "up_to_date_version",
]

FP32_TOLERANCE = 1e-4
_PARITY_BATCH = {32: 64, 224: 8}  # images per parity batch by input side (CPU time matters)
_MAX_DYNAMIC_BATCH = 4096


@dataclass
class ExportOptions:
    """One `cnnzoo export` of one model.

    Attributes:
        model: zoo entry name.
        repository: the model repository folder (created when missing).
        weights: a weights file; None means the shipped weights, or random init when the entry
            ships none (an untrained export, recorded as such).
        version: the version to write; None means latest + 1.
        fp16: export a half-precision graph (inputs and outputs stay FP32).
        max_batch_size: config.pbtxt `max_batch_size`.
        data_dir: where the parity batch's dataset lives.
        skip_unchanged: write nothing when the model's latest version already holds this export
            (see `up_to_date_version`); it compares with the latest version, so it does not
            combine with `version`.
    """

    model: str
    repository: Path
    weights: str | os.PathLike[str] | None = None
    version: int | None = None
    fp16: bool = False
    max_batch_size: int = 64
    data_dir: Path | None = None
    skip_unchanged: bool = False


def models_to_export(all_models: bool, model: str | None, include_untrained: bool) -> list[str]:
    """The entries an export command covers (validates the names)."""
    if not all_models:
        assert model is not None
        get_entry(model)
        return [model]
    names = [n for n in list_models() if include_untrained or get_entry(n).weights_file]
    if not names:
        raise InvalidInput("no zoo entry has weights; add --include-untrained to export them all")
    return names


def build_config(entry: ZooEntry, max_batch_size: int) -> model_config_pb2.ModelConfig:
    """The ModelConfig of `entry` (written as config.pbtxt with text_format)."""
    from cnnzoo.protos import model_config_pb2 as pb

    config = pb.ModelConfig(
        name=entry.name, platform="onnxruntime_onnx", max_batch_size=max_batch_size
    )
    config.input.add(name=INPUT_NAME, data_type=pb.TYPE_FP32, dims=list(entry.input_shape))
    config.output.add(
        name=OUTPUT_NAME,
        data_type=pb.TYPE_FP32,
        dims=[entry.num_classes],
        label_filename=LABELS_FILE,
    )
    config.dynamic_batching.SetInParent()
    for key, value in _parameters(entry).items():
        config.parameters[key].string_value = value
    return config


def _parameters(entry: ZooEntry) -> dict[str, str]:
    return {**entry.preprocess.to_parameters(), "zoo_entry": entry.name, "dataset": entry.dataset}


def onnx_metadata(
    entry: ZooEntry, source_sha256: str | None, precision: str, trained: bool
) -> dict[str, str]:
    """`metadata_props` of the ONNX file: the config's parameters plus labels and provenance."""
    from cnnzoo import __version__

    return {
        **_parameters(entry),
        "labels": json.dumps(list(entry.labels)),
        "num_classes": str(entry.num_classes),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "source_weights_sha256": source_sha256 or "",
        "trained": "true" if trained else "false",
        "precision": precision,
        "cnnzoo_version": __version__,
    }


def up_to_date_version(
    repository: Path,
    model: str,
    *,
    source_sha256: str | None,
    precision: str,
    config_text: str,
    labels_text: str,
) -> int | None:
    """The model's latest version if it holds exactly this export, else None.

    Up to date means: the latest version's manifest records the same `source_weights_sha256`
    (None for an untrained export: a re-export would only be another random initialisation),
    the same precision, and the sha256 of the same config.pbtxt and labels.txt; and every file
    still matches the sha256 its manifest records.

    Args:
        repository: the model repository folder (may not exist yet).
        model: the zoo entry name.
        source_sha256: sha256 of the weights file to export, None for random init.
        precision: "fp32" or "fp16".
        config_text: the config.pbtxt this export would write.
        labels_text: the labels.txt this export would write.

    Returns:
        The version number, or None when there is no version or the latest one differs.
    """
    from cnnzoo.zoo.repository import ModelRepository

    if not (repository / model / CONFIG_FILE).is_file():
        return None
    repo = ModelRepository(repository)
    versions = repo.versions(model)
    if not versions:
        return None
    latest = versions[-1]
    try:
        manifest = repo.verify(model, latest)
    except IntegrityError:
        return None  # damaged: export a sound version instead of pointing at this one
    files = manifest.get("files", {})
    same = (
        manifest.get("source_weights_sha256") == source_sha256
        and manifest.get("precision") == precision
        and files.get(CONFIG_FILE) == sha256_bytes(config_text.encode("utf-8"))
        and files.get(LABELS_FILE) == sha256_bytes(labels_text.encode("utf-8"))
    )
    return latest if same else None


def export_model(options: ExportOptions) -> dict[str, Any]:
    """Export one model; returns a summary (version, path, parity figures, seconds).

    With `options.skip_unchanged` and an up-to-date latest version, nothing is written and the
    summary names that version with `"skipped": True` (and no parity figures).

    Raises:
        NotFound: unknown model or weights file.
        InvalidInput: bad weights, a repository path that is a file, a version below 1 or below
            the latest, `skip_unchanged` together with `version`.
        AlreadyExists: the version exists, or the model's config.pbtxt differs from this export's.
        IntegrityError: the ONNX check or the parity check failed (nothing is left behind).
    """
    from google.protobuf import text_format

    from cnnzoo.zoo import build_model

    started = time.perf_counter()
    entry = get_entry(options.model)
    repository = Path(options.repository)
    if repository.exists() and not repository.is_dir():
        raise InvalidInput(f"--repository {repository} is a file, not a folder")
    if options.max_batch_size < 1:
        raise InvalidInput(f"--max-batch-size must be >= 1, got {options.max_batch_size}")
    if options.version is not None and options.version < 1:
        raise InvalidInput(f"--version must be >= 1, got {options.version}")
    if options.skip_unchanged and options.version is not None:
        raise InvalidInput(
            "--skip-unchanged compares with the latest version; drop --version to use it"
        )

    weights = options.weights
    if weights is None or str(weights) == "default":
        weights = entry.weights_file  # None: an untrained export, recorded as such
    trained = weights is not None
    model = build_model(entry.name, weights=weights)  # validates the weights before any write
    source_sha256 = sha256_file(Path(weights)) if weights is not None else None
    precision = "fp16" if options.fp16 else "fp32"

    config_text = text_format.MessageToString(build_config(entry, options.max_batch_size))
    labels_text = "".join(f"{label}\n" for label in entry.labels)
    model_dir = repository / entry.name
    _check_model_files(model_dir, config_text, labels_text)
    if options.skip_unchanged:
        current = up_to_date_version(
            repository,
            entry.name,
            source_sha256=source_sha256,
            precision=precision,
            config_text=config_text,
            labels_text=labels_text,
        )
        if current is not None:
            return {
                "model": entry.name,
                "version": current,
                "path": str(model_dir / str(current)),
                "precision": precision,
                "trained": trained,
                "skipped": True,
                "source_weights_sha256": source_sha256,
                "seconds": round(time.perf_counter() - started, 2),
            }
    version = _next_version(model_dir, options.version)

    created_model_dir = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    created_files: list[Path] = []
    try:
        tmp.mkdir()
        parity = _write_version(entry, model, tmp, options, precision, source_sha256, trained)
        manifest = {
            "model": entry.name,
            "version": version,
            "zoo_entry": entry.name,
            "precision": precision,
            "trained": trained,
            "files": {
                CONFIG_FILE: sha256_bytes(config_text.encode("utf-8")),
                LABELS_FILE: sha256_bytes(labels_text.encode("utf-8")),
                f"{version}/{ONNX_FILE}": sha256_file(tmp / ONNX_FILE),
                f"{version}/{WEIGHTS_FILE}": sha256_file(tmp / WEIGHTS_FILE),
            },
            "source_weights": None if weights is None else str(weights),
            "source_weights_sha256": source_sha256,
            "parity": parity,
            "max_batch_size": options.max_batch_size,
            "created": utc_now(),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for name, text in ((CONFIG_FILE, config_text), (LABELS_FILE, labels_text)):
            if not (model_dir / name).exists():
                atomic_write_bytes(model_dir / name, text.encode("utf-8"))
                created_files.append(model_dir / name)
        final = model_dir / str(version)
        try:
            os.rename(tmp, final)  # fails if another export took this version meanwhile
        except OSError:
            raise AlreadyExists(f"{final} appeared during the export; not overwriting it") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for path in created_files:
            path.unlink(missing_ok=True)
        if created_model_dir and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()
        raise
    return {
        "model": entry.name,
        "version": version,
        "path": str(final),
        "precision": precision,
        "trained": trained,
        "skipped": False,
        "source_weights_sha256": source_sha256,
        "parity": parity,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _check_model_files(model_dir: Path, config_text: str, labels_text: str) -> None:
    """A model's config.pbtxt and labels.txt are shared by its versions: never change them."""
    for name, text in ((CONFIG_FILE, config_text), (LABELS_FILE, labels_text)):
        path = model_dir / name
        if path.exists() and path.read_text(encoding="utf-8") != text:
            raise AlreadyExists(
                f"{path} exists with different contents (other settings, e.g. --max-batch-size); "
                f"export into another repository"
            )


def _next_version(model_dir: Path, requested: int | None) -> int:
    """latest + 1, or `requested` when it is above the latest (the server serves the latest)."""
    existing = (
        sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
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


def _write_version(
    entry: ZooEntry,
    model: nn.Module,
    folder: Path,
    options: ExportOptions,
    precision: str,
    source_sha256: str | None,
    trained: bool,
) -> dict[str, Any]:
    """Write model.onnx and model.safetensors into `folder`; returns the parity figures."""
    import onnx

    from cnnzoo.zoo.checkpoints import save_weights

    meta = {"zoo_entry": entry.name, "source_weights_sha256": source_sha256 or ""}
    save_weights(model, folder / WEIGHTS_FILE, meta)
    batch, inputs_kind = _parity_batch(entry, options.data_dir)
    onnx_path = folder / ONNX_FILE
    _export_onnx(model, batch[:2], onnx_path, fp16=options.fp16)
    proto = onnx.load(str(onnx_path))
    onnx.helper.set_model_props(proto, onnx_metadata(entry, source_sha256, precision, trained))
    proto.doc_string = f"cnnzoo {entry.name}: {entry.architecture}"
    onnx.save(proto, str(onnx_path))
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise IntegrityError(f"{entry.name}: the exported ONNX graph is invalid: {err}") from None
    return _parity(entry, model, onnx_path, batch, inputs_kind, fp16=options.fp16)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, fp16: bool) -> None:
    """torch.onnx (torch.export-based) export with a dynamic batch axis, weights inside the file."""
    import contextlib
    import io

    import torch
    from torch.export import Dim

    from cnnzoo.zoo._half import HalfPrecision

    module: nn.Module = HalfPrecision(model) if fp16 else model
    module.eval()
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: Dim("batch", min=1, max=_MAX_DYNAMIC_BATCH)}},
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)


def _parity_batch(entry: ZooEntry, data_dir: Path | None) -> tuple[torch.Tensor, str]:
    """A batch of the entry's test set; seeded random input where the dataset is not available."""
    import torch

    from cnnzoo.zoo.datasets import get_dataset

    count = _PARITY_BATCH.get(entry.input_shape[-1], 8)
    try:
        data = get_dataset(
            entry.dataset, "test", data_dir=data_dir, transform=entry.preprocess.torch_transform()
        )
        if len(data) >= 2:
            images = [data[i][0] for i in range(min(count, len(data)))]
            return torch.stack(images), "dataset"
    except DatasetNotFound:
        pass  # e.g. no ImageNet here, or a machine without the datasets: random input instead
    generator = torch.Generator().manual_seed(0)
    return torch.randn(count, *entry.input_shape, generator=generator), "random"


def _parity(
    entry: ZooEntry,
    model: nn.Module,
    onnx_path: Path,
    batch: torch.Tensor,
    inputs_kind: str,
    *,
    fp16: bool,
) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on `batch` (and on a single image, exercising the batch axis)."""
    import numpy as np
    import torch

    with torch.inference_mode():
        reference = model(batch).numpy()
    session = _session(onnx_path, fp16)
    outputs = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
    single = session.run([OUTPUT_NAME], {INPUT_NAME: batch[:1].numpy()})[0]
    if outputs.shape != reference.shape or single.shape != (1, entry.num_classes):
        raise IntegrityError(
            f"{entry.name}: ONNX output shapes {outputs.shape}/{single.shape} do not match "
            f"PyTorch {reference.shape}"
        )
    # inf/NaN would make every comparison below false, i.e. pass; e.g. fp16 overflow
    broken = ~np.isfinite(outputs) & np.isfinite(reference)
    broken_single = ~np.isfinite(single) & np.isfinite(reference[:1])
    if broken.any() or broken_single.any():
        hint = " (weights or activations beyond the fp16 range?)" if fp16 else ""
        raise IntegrityError(
            f"{entry.name}: ONNX Runtime gives inf/NaN logits where PyTorch's are finite"
            f"{hint}; the export was discarded"
        )
    max_abs = float(np.max(np.abs(outputs - reference)))
    agree = outputs.argmax(1) == reference.argmax(1)
    agreement = float(np.mean(agree))
    # A disagreement is a near tie when PyTorch's own margin between the two classes is within
    # the numeric error of the graph (common for untrained models); anything else is a failure.
    rows = np.arange(len(reference))
    margin = reference[rows, reference.argmax(1)] - reference[rows, outputs.argmax(1)]
    decisive = int(np.sum(~agree & (margin > 2 * max_abs)))
    result = {
        "n": int(batch.shape[0]),
        "inputs": inputs_kind,
        "max_abs_diff": max_abs,
        "single_image_max_abs_diff": float(np.max(np.abs(single - reference[:1]))),
        "top1_agreement": agreement,
        "top1_decisive_disagreements": decisive,
        "provider": session.get_providers()[0],
        "tolerance": None if fp16 else FP32_TOLERANCE,
    }
    worst = max(max_abs, result["single_image_max_abs_diff"])
    if not fp16 and not worst <= FP32_TOLERANCE:
        raise IntegrityError(
            f"{entry.name}: ONNX Runtime differs from PyTorch by {worst:.3g} "
            f"(> {FP32_TOLERANCE}); the export was discarded"
        )
    if fp16 and decisive:
        raise IntegrityError(
            f"{entry.name}: fp16 top-1 differs from fp32 PyTorch on {decisive} of "
            f"{result['n']} inputs beyond near ties; the export was discarded"
        )
    return result


def _session(onnx_path: Path, fp16: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # ORT raises its own exception types
        what = "this fp16 graph" if fp16 else "the exported graph"
        raise CnnzooError(
            f"ONNX Runtime's CPU provider cannot load {what} ({str(err).splitlines()[0]})"
        ) from None
