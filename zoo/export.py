"""Export zoo models into a Triton-layout model repository as parity-checked ONNX files.

One export builds the model with its weights, exports the ONNX graph (torch.onnx's
`torch.export`-based exporter, one self-contained file, dynamic batch axis), writes the
`.safetensors` weights beside it, checks the graph with `onnx.checker` and against PyTorch with
ONNX Runtime, and hands the files to the repository's `VersionWriter`, which makes the version
appear whole or not at all (`cnnzoo.zoo.repository`).

With `input_dtype="uint8"` the graph takes UINT8 pixels (N, C, H, W), the image after the
geometric steps of the model's preprocessing (colour, resize, crop, pad; `Preprocess.pixels`),
and does the rest inside: the cast, scaling to [0, 1] and normalisation, exactly as torchvision's
`ToTensor` and `Normalize` do. A client then sends a quarter of the bytes. Its parity check
feeds the graph the pixels of real test images and PyTorch the same images through the entry's
torchvision preprocessing.

With `skip_unchanged`, an export whose result the repository already holds writes nothing: the
latest version counts as up to date when its manifest records the same source weights (sha256),
the same precision and the same config.pbtxt and labels.txt, and its files still match their
recorded sha256 (a damaged latest version is replaced by a new one, not kept).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.export import Dim

from cnnzoo import __version__
from cnnzoo.errors import CnnzooError, DatasetNotFound, IntegrityError, InvalidInput
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.card import utc_now
from cnnzoo.zoo.checkpoints import save_weights
from cnnzoo.zoo.registry import ZooEntry, build_model, get_entry, list_models
from cnnzoo.zoo.repository import (
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    WEIGHTS_FILE,
    VersionWriter,
    build_config,
    config_text,
    up_to_date_version,
)

__all__ = [
    "ExportOptions",
    "FP32_TOLERANCE",
    "INPUT_DTYPES",
    "MAX_BATCH_SIZE",
    "export_model",
    "models_to_export",
    "onnx_metadata",
]

FP32_TOLERANCE = 1e-4
# The ONNX graph's batch axis goes up to this; config.pbtxt's max_batch_size may not exceed it.
MAX_BATCH_SIZE = 4096
_PARITY_BATCH = {32: 64, 224: 8}  # images per parity batch by input side (CPU time matters)
INPUT_DTYPES = ("fp32", "uint8")


@dataclass
class ExportOptions:
    """One `cnnzoo export` of one model.

    Attributes:
        model: zoo entry name, or a run folder (the model's name in the repository is the
            run's name).
        repository: the model repository folder (created when missing).
        weights: a weights file; None means the shipped weights, or random init when the entry
            ships none (an untrained export, recorded as such).
        version: the version to write; None means latest + 1.
        fp16: export a half-precision graph (inputs and outputs stay FP32).
        input_dtype: "fp32" (the preprocessed image) or "uint8" (its pixels; the graph scales
            and normalises them).
        max_batch_size: config.pbtxt `max_batch_size` (1 to `MAX_BATCH_SIZE`).
        data_dir: where the parity batch's dataset lives.
        skip_unchanged: write nothing when the model's latest version already holds this export
            (see `cnnzoo.zoo.repository.up_to_date_version`); it compares with the latest
            version, so it does not combine with `version`.

    Raises:
        InvalidInput: a version below 1, a max_batch_size out of range, an unknown
            input_dtype, or `skip_unchanged` together with `version`.
    """

    model: str
    repository: Path
    weights: str | os.PathLike[str] | None = None
    version: int | None = None
    fp16: bool = False
    input_dtype: str = "fp32"
    max_batch_size: int = 64
    data_dir: Path | None = None
    skip_unchanged: bool = False

    def __post_init__(self) -> None:
        self.repository = Path(self.repository)
        if not 1 <= self.max_batch_size <= MAX_BATCH_SIZE:
            raise InvalidInput(
                f"--max-batch-size must be between 1 and {MAX_BATCH_SIZE}, "
                f"got {self.max_batch_size}"
            )
        if self.input_dtype not in INPUT_DTYPES:
            raise InvalidInput(
                f"--input-dtype must be one of {', '.join(INPUT_DTYPES)}, got {self.input_dtype!r}"
            )
        if self.version is not None and self.version < 1:
            raise InvalidInput(f"--version must be >= 1, got {self.version}")
        if self.skip_unchanged and self.version is not None:
            raise InvalidInput(
                "--skip-unchanged compares with the latest version; drop --version to use it"
            )

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"


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


def _parameters(entry: ZooEntry) -> dict[str, str]:
    """config.pbtxt's parameters: the preprocessing, and which zoo model and dataset.

    An image folder is named by its folder's name, never its path: clients read the config
    (ModelConfig), and where the training data lay on the machine that trained the model is not
    theirs to know.
    """
    dataset = entry.card_fields()["dataset"]["name"]
    return {**entry.preprocess.to_parameters(), "zoo_entry": entry.name, "dataset": dataset}


def onnx_metadata(
    entry: ZooEntry,
    source_sha256: str | None,
    precision: str,
    trained: bool,
    input_dtype: str = "fp32",
) -> dict[str, str]:
    """`metadata_props` of the ONNX file: the config's parameters plus labels and provenance."""
    return {
        "input_dtype": input_dtype,
        **_parameters(entry),
        "arch": entry.arch,
        "labels": json.dumps(list(entry.labels)),
        "num_classes": str(entry.num_classes),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "source_weights_sha256": source_sha256 or "",
        "trained": "true" if trained else "false",
        "precision": precision,
        "cnnzoo_version": __version__,
    }


def export_model(options: ExportOptions) -> dict[str, Any]:
    """Export one model; returns a summary (version, path, parity figures, seconds).

    With `options.skip_unchanged` and an up-to-date latest version, nothing is written and the
    summary names that version with `"skipped": True` (and no parity figures).

    Raises:
        NotFound: unknown model or weights file.
        InvalidInput: bad weights, a repository path that is a file, a version below the latest.
        AlreadyExists: the version exists, or the model's config.pbtxt differs from this export's.
        IntegrityError: the ONNX check or the parity check failed (nothing is left behind).
    """
    started = time.perf_counter()
    entry = get_entry(options.model)
    repository = options.repository
    if repository.exists() and not repository.is_dir():
        raise InvalidInput(f"--repository {repository} is a file, not a folder")

    weights = options.weights
    if weights is None or str(weights) == "default":
        weights = entry.weights_file  # None: an untrained export, recorded as such
    trained = weights is not None
    model = build_model(entry, weights=weights)  # validates the weights before any write
    source_sha256 = sha256_file(Path(weights)) if weights is not None else None
    precision = options.precision

    config = _config(entry, options)
    labels = "".join(f"{label}\n" for label in entry.labels)
    writer = VersionWriter(
        repository, entry.name, config=config, labels=labels, version=options.version
    )
    summary: dict[str, Any] = {
        "model": entry.name,
        "precision": precision,
        "input_dtype": options.input_dtype,
        "trained": trained,
        "source_weights_sha256": source_sha256,
    }
    if options.skip_unchanged:
        current = up_to_date_version(
            repository,
            entry.name,
            source_sha256=source_sha256,
            precision=precision,
            config=config,
            labels=labels,
        )
        if current is not None:
            return {
                **summary,
                "version": current,
                "path": str(repository / entry.name / str(current)),
                "skipped": True,
                "seconds": round(time.perf_counter() - started, 2),
            }
    parity = _write_version(writer, entry, model, weights, source_sha256, options)
    return {
        **summary,
        "version": writer.version,
        "path": str(writer.path),
        "skipped": False,
        "parity": parity,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _config(entry: ZooEntry, options: ExportOptions) -> str:
    """The export's config.pbtxt text."""
    return config_text(
        build_config(
            entry.name,
            input_dims=entry.input_shape,
            num_classes=entry.num_classes,
            parameters=_parameters(entry),
            max_batch_size=options.max_batch_size,
            input_dtype=options.input_dtype,
        )
    )


def _write_version(
    writer: VersionWriter,
    entry: ZooEntry,
    model: nn.Module,
    weights: str | Path | None,
    source_sha256: str | None,
    options: ExportOptions,
) -> dict[str, Any]:
    """Write the weights and the ONNX graph into the version `writer` stages, check parity and
    commit it (nothing is left behind when a check fails); the parity figures."""
    trained = weights is not None
    with writer:
        save_weights(
            model,
            writer.folder / WEIGHTS_FILE,
            {"zoo_entry": entry.name, "source_weights_sha256": source_sha256 or ""},
        )
        batch, pixels, inputs_kind = _parity_batch(entry, options.data_dir)
        graph_input = pixels if options.input_dtype == "uint8" else batch
        onnx_path = writer.folder / ONNX_FILE
        _write_onnx(entry, model, graph_input[:2], onnx_path, options, source_sha256, trained)
        parity = _parity(
            entry, model, onnx_path, batch, graph_input, inputs_kind, fp16=options.fp16
        )
        writer.commit(
            zoo_entry=entry.name,
            arch=entry.arch,
            precision=options.precision,
            trained=trained,
            source_weights=None if weights is None else str(weights),
            source_weights_sha256=source_sha256,
            parity=parity,
            max_batch_size=options.max_batch_size,
            created=utc_now(),
        )
    return parity


class HalfPrecision(nn.Module):
    """FP32 in, FP16 inside, FP32 out, so an fp16 export keeps the fp32 config.pbtxt."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(model).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.half()).float()


class Uint8Pixels(nn.Module):
    """UINT8 pixels in: the cast, scaling and normalisation of the preprocessing in the graph,
    with torchvision's arithmetic (`ToTensor`'s x / 255, then `Normalize`'s (x - mean) / std)."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.inner = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x.float() / 255.0 - self.mean) / self.std)


def _write_onnx(
    entry: ZooEntry,
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    options: ExportOptions,
    source_sha256: str | None,
    trained: bool,
) -> None:
    """model.onnx with its metadata_props, checked by `onnx.checker`."""
    module: nn.Module = HalfPrecision(model) if options.fp16 else model
    if options.input_dtype == "uint8":
        module = Uint8Pixels(module, entry.preprocess.mean, entry.preprocess.std)
    export_onnx(module, example, path)
    proto = onnx.load(str(path))
    metadata = onnx_metadata(
        entry, source_sha256, options.precision, trained, input_dtype=options.input_dtype
    )
    # Each wrapper above adds `inner.` to the module paths the exporter records per node; this
    # says so, so explanation graphs name layers as the network does (`cnnzoo.interpret.graphs`).
    wrappers = int(options.fp16) + int(options.input_dtype == "uint8")
    if wrappers:
        metadata["module_prefix"] = "inner." * wrappers
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = f"cnnzoo {entry.name}: {entry.architecture}"
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise IntegrityError(f"{entry.name}: the exported ONNX graph is invalid: {err}") from None


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.onnx (torch.export-based) export with a dynamic batch axis, weights inside the file."""
    module.eval()
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: Dim("batch", min=1, max=MAX_BATCH_SIZE)}},
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)


def _parity_batch(entry: ZooEntry, data_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images of the entry's test set (seeded random images where it is not available), as
    PyTorch's preprocessing gives them (float) and as their pixels (uint8, see
    `Preprocess.pixels`)."""
    from PIL import Image

    count = _PARITY_BATCH.get(entry.input_shape[-1], 8)
    preprocess = entry.preprocess
    images, kind = [], "random"
    try:
        data = entry.open_dataset("test", data_dir=data_dir, transform=_as_is)
        if len(data) >= 2:
            images, kind = [data[i][0] for i in range(min(count, len(data)))], "dataset"
    except (DatasetNotFound, InvalidInput):
        pass  # e.g. no ImageNet here, or a run's image folder gone: random input instead
    if not images:
        generator = np.random.default_rng(0)
        side = max(preprocess.input_size)
        mode = preprocess.colour
        shape = (side, side) if mode == "L" else (side, side, 3)
        images = [
            Image.fromarray(generator.integers(0, 256, shape, dtype=np.uint8), mode=mode)
            for _ in range(count)
        ]
    transform = preprocess.torch_transform()
    batch = torch.stack([transform(image) for image in images])
    pixels = torch.from_numpy(np.stack([preprocess.pixels(image) for image in images]))
    return batch, pixels, kind


def _as_is(image: Any) -> Any:
    return image


def _parity(
    entry: ZooEntry,
    model: nn.Module,
    onnx_path: Path,
    batch: torch.Tensor,
    graph_input: torch.Tensor,
    inputs_kind: str,
    *,
    fp16: bool,
) -> dict[str, Any]:
    """ONNX Runtime on `graph_input` (the images as the graph takes them) vs PyTorch on
    `batch` (the same images through PyTorch's preprocessing), and on a single image,
    exercising the batch axis."""
    with torch.inference_mode():
        reference = model(batch).numpy()
    session = _session(onnx_path, fp16)
    outputs = session.run([OUTPUT_NAME], {INPUT_NAME: graph_input.numpy()})[0]
    single = session.run([OUTPUT_NAME], {INPUT_NAME: graph_input[:1].numpy()})[0]
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
