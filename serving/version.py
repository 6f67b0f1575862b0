"""One model version: what a served version holds, and how one is loaded.

Loading a version verifies every sha256 in its manifest, reads config.pbtxt (completed from the
graph where it leaves things out, as Triton does) and the label file, creates the ONNX Runtime
session and warms up each batch size; it runs in a worker thread, and nothing of the version
serves until the whole of it has loaded. Which version serves, when it is replaced and when it
is retired is the model manager's business (`cnnzoo.serving.model_manager`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cnnzoo.errors import IntegrityError, InvalidInput, ModelIncomplete
from cnnzoo.serving.autocomplete import GraphTensor, complete_config
from cnnzoo.serving.batcher import DynamicBatcher
from cnnzoo.serving.latency import LatencyRecorder, MetricsConfig
from cnnzoo.serving.limits import RequestLimits
from cnnzoo.serving.runtime import CUDA, OnnxModel, RuntimeOptions, warm_up_sizes
from cnnzoo.serving.spec import ModelSpec, refuse_unsupported
from cnnzoo.serving.stats import ModelStats
from cnnzoo.serving.tensors import RowLayout
from cnnzoo.zoo.preprocess import PARAMETER_KEYS, Preprocess
from cnnzoo.zoo.repository import LABELS_FILE, ONNX_FILE, Manifest, ModelRepository

if TYPE_CHECKING:  # the message type only: protobuf stays in the front ends
    from cnnzoo.protos.model_config_pb2 import ModelConfig

__all__ = [
    "INLINE_BUDGET_S",
    "Fingerprint",
    "LoadOptions",
    "LoadedVersion",
    "VersionLoader",
    "fingerprint",
    "inline_rows",
]

log = logging.getLogger(__name__)

# Batch sizes a model runs in at most this long (measured at warm-up) run on the event loop
# thread, without the hand-off to an instance thread and back (see serving.batcher).
INLINE_BUDGET_S = 1e-3

# What loading a version read: (file name, size, mtime_ns) of each of its files and the model's.
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(eq=False)
class LoadedVersion:
    """One model version ready to run: its interface, runtime session and batcher."""

    name: str
    version: int
    repository: ModelRepository
    spec: ModelSpec
    config: ModelConfig  # passed through to the ModelConfig RPC and REST endpoint
    labels: tuple[str, ...]  # empty: the model has no label file
    preprocess: Preprocess | None  # None: config.pbtxt has no preprocessing parameters
    manifest: Manifest | None  # None: a version without manifest.json (not written by cnnzoo)
    runtime: OnnxModel
    stats: ModelStats
    batcher: DynamicBatcher  # started when the version begins to serve, closed when retired
    layout: RowLayout = field(default_factory=RowLayout)  # requests as rows, rows as graph input
    preprocess_missing: str = ""  # why there is no preprocessing, for Classify and Explain
    fingerprint: Fingerprint = ()  # the files as they were when the version was loaded

    @property
    def version_str(self) -> str:
        return str(self.version)

    @property
    def provider(self) -> str:
        return self.runtime.provider

    def label(self, index: int) -> str:
        """The label of class `index` ("" when the model has no label file)."""
        return self.labels[index] if index < len(self.labels) else ""

    def image_preprocess(self, operation: str) -> Preprocess:
        """The preprocessing `operation` (Classify, Explain) needs to turn images into inputs.

        Raises:
            ModelIncomplete: config.pbtxt has no preprocessing parameters (names the missing
                one), or the model takes no batch of images (max_batch_size 0).
        """
        if not self.spec.batched:
            raise ModelIncomplete(
                f"{operation} sends images as a batch, and {self.name!r} has no batch dimension "
                "(max_batch_size 0); ModelInfer works (send the input tensor itself)"
            )
        if self.preprocess is None:
            raise ModelIncomplete(
                f"{operation} needs the preprocessing of {self.name!r} version {self.version} to "
                f"turn images into its input, and {self.preprocess_missing}; ModelInfer works "
                "(send the input tensor itself)"
            )
        return self.preprocess


def fingerprint(repository: ModelRepository, name: str, version: int) -> Fingerprint:
    """Size and mtime of every file a load of `version` reads (cheap: stat calls only)."""
    folder = repository.root / name
    try:  # config.pbtxt and label files beside it, and the version's files
        paths = sorted(path for path in folder.iterdir() if path.is_file())
        paths += sorted((folder / str(version)).iterdir())
        stats = [(path.name, path.stat()) for path in paths]
    except OSError:
        return ()  # unreadable now: tried again once it can be read (a new fingerprint)
    return tuple((n, st.st_size, st.st_mtime_ns) for n, st in stats)


def inline_rows(run_seconds: dict[int, float]) -> int:
    """The largest warmed batch size that runs within `INLINE_BUDGET_S` (0: none)."""
    return max((size for size, s in run_seconds.items() if s <= INLINE_BUDGET_S), default=0)


@dataclass(frozen=True)
class LoadOptions:
    """How versions are loaded.

    Args:
        runtime: how ONNX Runtime sessions are created.
        batching: False disables dynamic batching (each request runs alone).
        warm_up: run each served batch size once before a version reports ready.
        require_manifest: refuse versions without a manifest.json to verify.
        metrics: which optional latency metrics each version records (`--metrics-config`).
        max_queue_size: the batcher queue bound for models whose config.pbtxt sets none.
    """

    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    batching: bool = True
    warm_up: bool = True
    require_manifest: bool = False
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    max_queue_size: int = RequestLimits.max_queue_size


class VersionLoader:
    """Loads versions of the models of one repository.

    Each version's counters outlive it (`stats`): a version loaded again counts on where it
    left off, as Prometheus counters must.
    """

    def __init__(self, repository: ModelRepository, options: LoadOptions) -> None:
        self.repository = repository
        self.options = options
        self.stats: dict[tuple[str, int], ModelStats] = {}

    def load(self, name: str, version: int, files: Fingerprint = ()) -> LoadedVersion:
        """Verify, read and open one version, then warm it up (blocking: run it in a worker
        thread). `files`: the fingerprint its files had before the load began.

        Only config.pbtxt and model.onnx are required (completed from the graph as Triton
        does); a manifest is verified when there is one (required with `require_manifest`),
        labels and preprocessing parameters are used when present.

        Raises:
            CnnzooError: the version is refused (the reason says why); OSError: its files
                cannot be read; ExecutionProviderError: the device cannot be used at all.
        """
        repository = self.repository
        manifest = None
        if repository.has_manifest(name, version):
            manifest = repository.verify(name, version)
        elif self.options.require_manifest:
            raise IntegrityError(
                f"{name} version {version} has no manifest.json, and the server runs with "
                "--require-manifest (export it with cnnzoo export, or serve without the flag)"
            )
        config = repository.config(name)
        refuse_unsupported(config)  # before the graph is loaded
        runtime = OnnxModel(repository.version_dir(name, version) / ONNX_FILE, self.options.runtime)
        refuse_unsupported(config, on_gpu=runtime.provider == CUDA)
        if config.model_warmup:
            log.info(
                "%s version %d: model_warmup is replaced by this server's own warm-up (every "
                "batch size it runs, with zeros, before the version reports ready)",
                name,
                version,
            )
        spec = self._spec(name, version, config, runtime)
        labels = self._labels(name, config, spec)
        preprocess, preprocess_missing = self._preprocess(name, spec)
        layout = RowLayout.of(spec)
        runtime.fit_shapes(layout)
        if self.options.warm_up:
            runtime.warm_up(
                spec.input.dims, warm_up_sizes(spec.max_batch_size, spec.preferred_batch_sizes)
            )
        stats = self._stats(name, version, spec)
        return LoadedVersion(
            name=name,
            version=version,
            repository=repository,
            spec=spec,
            config=config,
            labels=labels,
            preprocess=preprocess,
            manifest=manifest,
            runtime=runtime,
            stats=stats,
            batcher=self._batcher(name, version, spec, runtime, stats),
            layout=layout,
            preprocess_missing=preprocess_missing,
            fingerprint=files,
        )

    def _spec(self, name: str, version: int, config: ModelConfig, runtime: OnnxModel) -> ModelSpec:
        """The served interface: config.pbtxt, completed from the graph where it is silent."""
        filled = complete_config(
            config,
            [GraphTensor.from_ort(t) for t in runtime.inputs],
            [GraphTensor.from_ort(t) for t in runtime.outputs],
            model=name,
        )
        if filled:
            log.info(
                "%s version %d: completed from model.onnx: %s", name, version, "; ".join(filled)
            )
        return ModelSpec.from_config(config)

    def _stats(self, name: str, version: int, spec: ModelSpec) -> ModelStats:
        stats = self.stats.get((name, version))
        if stats is None:
            metrics = self.options.metrics
            latency = None
            if metrics.summary_latencies or metrics.histogram_latencies:
                latency = LatencyRecorder(metrics, spec.histogram_buckets)
            stats = self.stats[(name, version)] = ModelStats(name, str(version), latency=latency)
        return stats

    def _batcher(
        self, name: str, version: int, spec: ModelSpec, runtime: OnnxModel, stats: ModelStats
    ) -> DynamicBatcher:
        return DynamicBatcher(
            runtime.run,
            max_batch_size=spec.max_batch_size,
            max_queue_delay_us=spec.max_queue_delay_us,
            preferred_batch_sizes=spec.preferred_batch_sizes,
            batching=self.options.batching and spec.dynamic_batching,
            instances=spec.instance_count,
            max_queue_size=spec.max_queue_size or self.options.max_queue_size,
            stats=stats,
            name=f"{name}-{version}",
            inline_rows=inline_rows(runtime.run_seconds),
        )

    def _labels(self, name: str, config: ModelConfig, spec: ModelSpec) -> tuple[str, ...]:
        """The output's label file (config.pbtxt's `label_filename`, else labels.txt if there
        is one); none is fine (the classification extension then answers indices)."""
        filename = config.output[0].label_filename
        if not filename and not (self.repository.root / name / LABELS_FILE).is_file():
            return ()
        labels = tuple(self.repository.labels(name, filename or LABELS_FILE))
        classes = spec.output.dims[-1] if spec.output.dims else 0
        if len(labels) != classes:
            raise IntegrityError(
                f"{name}/{filename or LABELS_FILE} has {len(labels)} labels but output "
                f"{spec.output.name!r} has {classes} classes"
            )
        return labels

    @staticmethod
    def _preprocess(name: str, spec: ModelSpec) -> tuple[Preprocess | None, str]:
        """config.pbtxt's preprocessing parameters, or None and what is missing."""
        present = [k for k in PARAMETER_KEYS if k in spec.parameters]
        if not present:
            return None, "config.pbtxt has no preprocessing parameters (colour, mean, std, ...)"
        try:
            preprocess = Preprocess.from_parameters(spec.parameters)
        except InvalidInput as err:
            return None, f"its config.pbtxt preprocessing is incomplete: {err.reason}"
        if (preprocess.channels, *preprocess.input_size) != spec.input.dims:
            raise IntegrityError(
                f"{name}: preprocessing gives {preprocess.channels}x"
                f"{preprocess.input_size[0]}x{preprocess.input_size[1]} images but input "
                f"{spec.input.name!r} has dims {list(spec.input.dims)}"
            )
        return preprocess, ""
