"""The models a server holds: loading, integrity checks, warm-up, lookup and hot reload.

Each model in the repository is served at its latest complete version. Loading a version
verifies every sha256 in its manifest, reads config.pbtxt and labels.txt, creates the ONNX
Runtime session and warms up each batch size, all in a worker thread; only then does the version
replace the one being served. A model that fails to load is marked unavailable with the reason
(requests for it get UNAVAILABLE naming it) while the others serve.

Hot reload (`poll`): a newer version directory is loaded beside the current one, swapped in with
one assignment on the event loop, and the old version's batcher then finishes what it had
queued before it is closed, so no request is dropped or failed by the switch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.batcher import DynamicBatcher
from serving.errors import ExecutionProviderError, IntegrityError, NotFound, Unavailable
from serving.runtime import OnnxModel, RuntimeOptions, warm_up_sizes
from serving.spec import ModelSpec
from serving.stats import ModelStats
from zoo.errors import CnnzooError
from zoo.preprocess import Preprocess
from zoo.repository import ONNX_FILE, WEIGHTS_FILE, ModelRepository

__all__ = ["LoadedVersion", "ModelManager", "ModelRecord"]

log = logging.getLogger(__name__)

READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"


@dataclass(eq=False)
class LoadedVersion:
    """One model version ready to run: its interface, runtime session and batcher."""

    name: str
    version: int
    directory: Path
    spec: ModelSpec
    config: Any  # model_config_pb2.ModelConfig, passed through to the ModelConfig RPC
    labels: tuple[str, ...]
    preprocess: Preprocess
    manifest: dict[str, Any]
    runtime: OnnxModel
    stats: ModelStats
    batcher: DynamicBatcher | None = None
    _torch_model: Any = None
    _torch_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def version_str(self) -> str:
        return str(self.version)

    @property
    def provider(self) -> str:
        return self.runtime.provider

    def torch_model(self) -> Any:
        """The PyTorch model built from this version's model.safetensors (loaded once, lazily).

        Explanations need gradients, which the ONNX session cannot give; torch is imported only
        when the first explanation is asked for.
        """
        with self._torch_lock:
            if self._torch_model is None:
                import zoo

                entry = self.manifest.get("zoo_entry") or self.spec.parameters.get("zoo_entry")
                if not entry:
                    raise IntegrityError(
                        f"{self.name} version {self.version}: the manifest names no zoo_entry, "
                        "so its PyTorch model cannot be rebuilt for explanations"
                    )
                self._torch_model = zoo.build_model(entry, weights=self.directory / WEIGHTS_FILE)
            return self._torch_model


@dataclass(eq=False)
class ModelRecord:
    """A model name and what the server knows about it."""

    name: str
    state: str = LOADING
    reason: str = ""
    current: LoadedVersion | None = None
    versions: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # versions that would not load


class ModelManager:
    """Loads and serves the models of one repository.

    Args:
        repository: the model repository.
        runtime: how ONNX Runtime sessions are created.
        models: serve only these model names (default: every model in the repository).
        batching: False disables dynamic batching for every model (each request runs alone).
        warm_up: run each served batch size once before a version reports ready.
    """

    def __init__(
        self,
        repository: ModelRepository,
        runtime: RuntimeOptions,
        *,
        models: Sequence[str] = (),
        batching: bool = True,
        warm_up: bool = True,
    ) -> None:
        self.repository = repository
        self.runtime_options = runtime
        self._only = tuple(models)
        self._batching = batching
        self._warm_up = warm_up
        self._records: dict[str, ModelRecord] = {}
        self._stats: dict[tuple[str, int], ModelStats] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.loaded = False  # the start-up load has finished
        self._closing = False

    # -- start-up -----------------------------------------------------------------------------

    def discover(self) -> list[str]:
        """Register the model names to serve (checks `--model` names exist)."""
        available = self.repository.models()
        names = list(self._only) or available
        missing = [n for n in names if n not in available]
        if missing:
            raise NotFound(
                f"model {', '.join(map(repr, missing))} is not in {self.repository.root} "
                f"(models: {', '.join(available) or 'none'})"
            )
        for name in names:
            self._records.setdefault(name, ModelRecord(name))
        return names

    async def load_all(self) -> None:
        """Load the latest version of every registered model, one after another."""
        for record in list(self._records.values()):
            await self._load_latest(record)
        self.loaded = True

    # -- lookup (hot path) --------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedVersion:
        """The version serving `name` (and `version`, when given).

        Raises:
            NotFound: no such model or version is served.
            Unavailable: the model is known but is loading or could not be loaded.
        """
        record = self._records.get(name)
        if record is None:
            raise NotFound(f"unknown model {name!r}; served models: {', '.join(self._records)}")
        current = record.current
        if current is None:
            why = f": {record.reason}" if record.reason else ""
            raise Unavailable(f"model {name!r} is {record.state.lower()}{why}")
        if version and version != current.version_str:
            raise NotFound(
                f"model {name!r} has no version {version!r} being served "
                f"(serving version {current.version})"
            )
        return current

    def record(self, name: str) -> ModelRecord:
        record = self._records.get(name)
        if record is None:
            raise NotFound(f"unknown model {name!r}; served models: {', '.join(self._records)}")
        return record

    def records(self) -> list[ModelRecord]:
        return list(self._records.values())

    def all_stats(self) -> list[ModelStats]:
        """Counters of every version ever served (Prometheus counters never go backwards)."""
        return list(self._stats.values())

    @property
    def ready(self) -> bool:
        """Start-up finished and at least one model serves."""
        return self.loaded and any(r.current is not None for r in self._records.values())

    # -- hot reload ---------------------------------------------------------------------------

    async def poll(self) -> None:
        """Pick up new models and new versions from the repository."""
        if not self._only:
            for name in self.repository.models():
                if name not in self._records:
                    log.info("new model %s in the repository", name)
                    self._records[name] = ModelRecord(name)
        for record in list(self._records.values()):
            await self._load_latest(record)

    # -- loading ------------------------------------------------------------------------------

    async def _load_latest(self, record: ModelRecord) -> None:
        if self._closing:
            return
        try:
            record.versions = self.repository.versions(record.name)
        except CnnzooError as err:
            self._refuse(record, None, err.reason)
            return
        candidates = [v for v in record.versions if v not in record.failed]
        if not candidates:
            if record.current is None:
                reasons = "; ".join(f"version {v}: {r}" for v, r in record.failed.items())
                reasons = reasons or "it has no complete version"
                self._refuse(record, None, reasons)
            return
        latest = candidates[-1]
        if record.current is not None and record.current.version >= latest:
            return
        log.info("loading %s version %d", record.name, latest)
        try:
            loaded = await asyncio.to_thread(self._load_version, record.name, latest)
        except ExecutionProviderError:
            raise  # the device choice is wrong for every model: a start-up error
        except CnnzooError as err:
            self._refuse(record, latest, err.reason)
            return
        except Exception as err:  # e.g. onnxruntime cannot parse the file
            log.exception("loading %s version %d failed", record.name, latest)
            self._refuse(record, latest, f"{type(err).__name__}: {err}")
            return
        if self._closing:  # the server began to stop while this version was loading
            return
        loaded.batcher = DynamicBatcher(
            loaded.runtime.run,
            max_batch_size=loaded.spec.max_batch_size,
            max_queue_delay_us=loaded.spec.max_queue_delay_us,
            batching=self._batching and loaded.spec.dynamic_batching,
            instances=loaded.spec.instance_count,
            stats=loaded.stats,
            name=f"{record.name}-{latest}",
        )
        loaded.batcher.start()
        previous, record.current = record.current, loaded  # the switch: one assignment
        record.state, record.reason = READY, ""
        log.info(
            "serving %s version %d on %s%s",
            record.name,
            latest,
            loaded.provider,
            f" (replacing version {previous.version})" if previous else "",
        )
        if previous is not None:
            self._retire(previous)

    def _load_version(self, name: str, version: int) -> LoadedVersion:
        """Verify, read and open one version, then warm it up (runs in a worker thread)."""
        manifest = self.repository.verify(name, version)
        config = self.repository.config(name)
        spec = ModelSpec.from_config(config)
        labels = tuple(self.repository.labels(name))
        classes = spec.output.dims[-1] if spec.output.dims else 0
        if len(labels) != classes:
            raise IntegrityError(
                f"{name}/labels.txt has {len(labels)} labels but output "
                f"{spec.output.name!r} has {classes} classes"
            )
        preprocess = self.repository.preprocess(name)
        if (preprocess.channels, *preprocess.input_size) != spec.input.dims:
            raise IntegrityError(
                f"{name}: preprocessing gives {preprocess.channels}x"
                f"{preprocess.input_size[0]}x{preprocess.input_size[1]} images but input "
                f"{spec.input.name!r} has dims {list(spec.input.dims)}"
            )
        directory = self.repository.version_dir(name, version)
        runtime = OnnxModel(directory / ONNX_FILE, self.runtime_options)
        if runtime.input_name != spec.input.name or runtime.output_name != spec.output.name:
            raise IntegrityError(
                f"{name} version {version}: model.onnx has input {runtime.input_name!r} and "
                f"output {runtime.output_name!r}, config.pbtxt says {spec.input.name!r} and "
                f"{spec.output.name!r}"
            )
        if self._warm_up:
            runtime.warm_up(
                spec.input.dims, warm_up_sizes(spec.max_batch_size, spec.preferred_batch_sizes)
            )
        stats = self._stats.setdefault((name, version), ModelStats(name, str(version)))
        return LoadedVersion(
            name=name,
            version=version,
            directory=directory,
            spec=spec,
            config=config,
            labels=labels,
            preprocess=preprocess,
            manifest=manifest,
            runtime=runtime,
            stats=stats,
        )

    def _refuse(self, record: ModelRecord, version: int | None, reason: str) -> None:
        if version is not None:
            record.failed[version] = reason
            reason = f"version {version}: {reason}"
        if record.current is None:
            if record.state == UNAVAILABLE and record.reason == reason:
                return  # already reported (the repository poll sees it again)
            record.state, record.reason = UNAVAILABLE, reason
            log.error("model %s is unavailable: %s", record.name, reason)
        else:
            log.error(
                "model %s keeps serving version %d; a newer one was refused: %s",
                record.name,
                record.current.version,
                reason,
            )

    def _retire(self, loaded: LoadedVersion) -> None:
        task = asyncio.get_running_loop().create_task(self._close_version(loaded))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _close_version(loaded: LoadedVersion) -> None:
        if loaded.batcher is not None:
            await loaded.batcher.close()  # finishes every request it had queued
        log.info("unloaded %s version %d", loaded.name, loaded.version)

    # -- shutdown -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Finish queued requests of every version, then release them."""
        self._closing = True
        for record in self._records.values():
            if record.current is not None:
                self._retire(record.current)
                record.current, record.state = None, UNAVAILABLE
                record.reason = "the server is shutting down"
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
