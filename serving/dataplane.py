"""The inference data plane: live/ready/metadata/infer/classify/explain for any transport.

It runs requests through the model's batcher: inference tensors checked and encoded by
`cnnzoo.serving.tensors`, Classify's images decoded and ranked (softmax top-k), Explain handed
to `cnnzoo.serving.explain`. Every such call runs inside one admission frame
(`cnnzoo.serving.admission`: limits, in-flight counts, the deadline, statistics). Errors are
`CnnzooError`s with reasons that name the expected value; each front end maps them to its status
codes. No protobuf or gRPC in here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from cnnzoo.errors import CnnzooError, InvalidInput, ModelExecutionError, NotFound, Unavailable
from cnnzoo.serving.activations import (
    ActivationsResult,
    input_png,
    layer_maps,
    select_layers,
)
from cnnzoo.serving.admission import Admission
from cnnzoo.serving.autocomplete import config_of
from cnnzoo.serving.call_queue import CallQueue
from cnnzoo.serving.explain import (
    GRAPH_METHODS,
    UNIT_METHODS,
    ExplainRequestCheck,
    ExplanationGraphs,
    check_request,
)
from cnnzoo.serving.explain_quality import check_quality, explanation_quality
from cnnzoo.serving.explanation_infer import (
    explanation_name,
    explanation_response,
    infer_explanation,
)
from cnnzoo.serving.images import convert_images, images_to_batch, open_images, pixel_parts
from cnnzoo.serving.limits import RequestLimits, over_limit
from cnnzoo.serving.model_manager import ModelManager
from cnnzoo.serving.shared_memory import RegionWriter, SystemSharedMemory
from cnnzoo.serving.spec import TensorSpec
from cnnzoo.serving.stats import ModelStats
from cnnzoo.serving.tensors import decode_input, encode_output, requested_outputs, top_k_indices
from cnnzoo.serving.types import (
    ClassifyResult,
    ClassPrediction,
    ExplainResult,
    IndexEntry,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelSummary,
    SharedMemoryRef,
    TensorInfo,
)
from cnnzoo.serving.version import LoadedVersion

if TYPE_CHECKING:  # the message type only: protobuf stays in the front ends
    from cnnzoo.protos.model_config_pb2 import ModelConfig

__all__ = ["DEFAULT_TOP_K", "EXTENSIONS", "DataPlane", "softmax"]

# Protocol extensions this server implements (ServerMetadata.extensions); the data plane adds
# "system_shared_memory" where it has a shared-memory registry.
EXTENSIONS = (
    "classification",
    "model_configuration",
    "model_repository",
    "statistics",
    "binary_tensor_data",
)
SYSTEM_SHARED_MEMORY = "system_shared_memory"
DEFAULT_TOP_K = 5
DECODE_THREADS = 2

T = TypeVar("T")


class DataPlane:
    """Answers the protocol's questions from a `ModelManager`.

    Args:
        models: the loaded models.
        server_name: ServerMetadata name.
        server_version: ServerMetadata version.
        shared_memory: the system shared-memory regions tensors may name (None: not offered).
        limits: bounds on requests (default: the model manager's).
    """

    def __init__(
        self,
        models: ModelManager,
        server_name: str,
        server_version: str,
        shared_memory: SystemSharedMemory | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        self.models = models
        self.server_name = server_name
        self.server_version = server_version
        self.shared_memory = shared_memory
        self.extensions = EXTENSIONS + (
            (SYSTEM_SHARED_MEMORY,) if shared_memory is not None else ()
        )
        self.limits = limits or models.limits
        self.draining = False
        # Called after a client loaded or unloaded a model (the server updates health).
        self.on_models_changed: Callable[[], Awaitable[None]] | None = None
        self._admission = Admission(self.limits)
        # Decoding uploads is CPU work in Pillow (releases the GIL). Callers take turns on the
        # threads, a part of a request at a time (see `_decoding`).
        self._decode_pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        self._decode_turns = CallQueue(
            DECODE_THREADS, max_waiting=1 << 30, places="the image-decoding threads"
        )
        self.explanations = ExplanationGraphs(models.runtime)

    @property
    def requests_started(self) -> int:
        """Inference, Classify and Explain calls admitted so far."""
        return self._admission.started

    def close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        if self.shared_memory is not None:
            self.shared_memory.close()

    # -- health and metadata ------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining and self.models.ready

    def model_ready(self, name: str, version: str = "") -> bool:
        if self.models.loadable(name):
            return False  # in the repository, not loaded (explicit model control)
        explained = self._explanation_name(name)
        if explained is not None:  # ready where its classifier is (its graph is made on demand)
            return self.model_ready(explained[0], version)
        record = self.models.record(name)
        if self.draining or record.current is None:
            return False
        return not version or any(v.version_str == version for v in record.served())

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return self.server_name, self.server_version, self.extensions

    def shared_memory_registry(self) -> SystemSharedMemory:
        """The system shared-memory regions (Register/Status/Unregister act on it).

        Raises:
            Unavailable: this server does not offer the extension (no `/dev/shm`).
        """
        if self.shared_memory is None:
            raise Unavailable("this server does not offer system shared memory (no /dev/shm)")
        return self.shared_memory

    def execution_providers(self) -> list[str]:
        return sorted({v.provider for r in self.models.records() for v in r.served()})

    async def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        explained = self.explanation_of(name, version)
        if explained is not None:
            served, method = explained
            graph = await self.explanations.get(served, method)
            return ModelMetadata(
                name=graph.name,
                versions=(served.version_str,),
                platform=served.spec.platform,
                inputs=tuple(map(_tensor_info, graph.input_specs)),
                outputs=tuple(map(_tensor_info, graph.output_specs)),
                execution_provider=graph.provider,
            )
        served = self.models.get(name, version)
        spec = served.spec
        # Triton lists every version served (the model's), or the one asked for.
        versions = self.models.record(name).served() if not version else [served]
        return ModelMetadata(
            name=name,
            versions=tuple(v.version_str for v in versions),
            platform=spec.platform,
            inputs=(_tensor_info(spec.input),),
            outputs=(_tensor_info(spec.output),),
            execution_provider=served.provider,
        )

    async def model_config(self, name: str, version: str = "") -> ModelConfig:
        """The model's ModelConfig message, as read from its config.pbtxt (an explanation
        model's: as its graph is served, with dynamic batching)."""
        explained = self.explanation_of(name, version)
        if explained is not None:
            graph = await self.explanations.get(*explained)
            return config_of(
                graph.name, graph.input_specs, graph.output_specs, graph.max_batch_size
            )
        return self.models.get(name, version).config

    def model_statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        if not name:
            if version:
                raise InvalidInput("a version needs a model name")
            served = [v.stats for r in self.models.records() for v in r.served()]
            return served + [g.stats for g in self.explanations.built()]
        explained = self.explanation_of(name, version)
        if explained is not None:  # counted from its graph's first call
            classifier, method = explained
            made = [g for g in self.explanations.built(classifier) if g.method == method]
            return [made[0].stats if made else ModelStats(name, classifier.version_str)]
        if not version:
            self.models.get(name)  # raises when the model does not serve
            return [v.stats for v in self.models.record(name).served()]
        return [self.models.get(name, version).stats]

    def list_models(self) -> list[ModelSummary]:
        summaries = []
        for record in self.models.records():
            current = record.current
            if current is not None:
                params = current.spec.parameters
                summaries.append(
                    ModelSummary(
                        name=record.name,
                        version=current.version_str,
                        versions=tuple(map(str, record.versions)),
                        ready=not self.draining,
                        state=record.state,
                        reason=record.reason,
                        zoo_entry=params.get("zoo_entry", ""),
                        dataset=params.get("dataset", ""),
                        num_classes=current.spec.output.dims[-1] if current.spec.output.dims else 0,
                        input_shape=current.spec.input.dims,
                        execution_provider=current.provider,
                        max_batch_size=current.spec.max_batch_size,
                    )
                )
            else:
                summaries.append(
                    ModelSummary(
                        name=record.name,
                        version="",
                        versions=tuple(map(str, record.versions)),
                        ready=False,
                        state=record.state,
                        reason=record.reason,
                        zoo_entry="",
                        dataset="",
                        num_classes=0,
                        input_shape=(),
                        execution_provider="",
                        max_batch_size=0,
                    )
                )
        return summaries

    # -- model control ------------------------------------------------------------------------

    def repository_index(self, repository: str = "", ready_only: bool = False) -> list[IndexEntry]:
        self._check_repository(repository)
        return self.models.index(ready_only=ready_only)

    async def load_model(self, repository: str, name: str, parameters: Sequence[str] = ()) -> None:
        """Load (or reload) `name`; `parameters` are the names of the request's parameters."""
        self._check_repository(repository)
        overrides = sorted(p for p in parameters if p == "config" or p.startswith("file:"))
        if overrides:
            raise InvalidInput(
                f"load parameters {', '.join(map(repr, overrides))} (configuration and file "
                "overrides) are not supported; change the model's files in the repository and "
                "load it again"
            )
        try:
            await self.models.load(name)
        finally:
            await self._models_changed()

    async def unload_model(self, repository: str, name: str) -> None:
        self._check_repository(repository)
        await self.models.unload(name)
        await self._models_changed()

    def _check_repository(self, repository: str) -> None:
        """One repository is served; a request may name it by its folder's name."""
        if repository and repository != self.models.repository.root.name:
            raise NotFound(
                f"no repository {repository!r}; this server serves one repository, "
                f"{self.models.repository.root.name!r} (or leave repository_name empty)"
            )

    async def _models_changed(self) -> None:
        if self.on_models_changed is not None:
            await self.on_models_changed()

    # -- inference ----------------------------------------------------------------------------

    async def infer(self, request: InferRequest, deadline: float | None = None) -> InferResponse:
        """Run one KServe v2 inference request (batched with concurrent ones).

        `deadline` (`time.monotonic()` seconds): if it passes while the request waits for the
        model, the request is not run and `DeadlineExceeded` is raised. A request's own
        `timeout_us` shortens it.
        """
        if not request.model_name:
            raise InvalidInput("the request names no model (model_name is empty)")
        explained = self.explanation_of(request.model_name, request.model_version)
        if explained is not None:
            return await self._infer_explanation(*explained, request, deadline)
        served = self.models.get(request.model_name, request.model_version)
        with self._admission.call(deadline, served.stats) as call:
            spec = served.spec
            if len(request.inputs) != 1:
                raise InvalidInput(
                    f"model {served.name!r} takes 1 input ({spec.input.name!r} "
                    f"{spec.input.datatype} {spec.input.shape_with_batch()}), "
                    f"the request has {len(request.inputs)}"
                )
            call.shorten(request.timeout_us)
            tensor = decode_input(
                request.inputs[0], spec.input, spec.max_batch_size, served.name, self._input_region
            )
            wanted = requested_outputs(request.outputs, spec.output, served.name)
            targets = [
                self._output_region(o.shared_memory) if o.shared_memory else None for o in wanted
            ]
            rows = served.layout.to_rows(tensor)
            future = served.batcher.enqueue(rows, call.deadline, may_run_now=True)
            logits = await _run(served, future)  # no wait when it ran at once
            outputs = [
                encode_output(logits, out, target, spec.output, served.labels, served.layout)
                for out, target in zip(wanted, targets, strict=True)
            ]
            return InferResponse(served.name, served.version_str, request.id, outputs)

    def explanation_of(self, name: str, version: str = "") -> tuple[LoadedVersion, str] | None:
        """(classifier version, method) when `name` is not a served model but the explanation
        model `CLASSIFIER.METHOD` of one; None for a served model.

        Raises:
            NotFound: neither (the message lists the served models), as `models.get` does.
        """
        try:
            self.models.get(name, version)
            return None
        except NotFound:
            explained = self._explanation_name(name)
            if explained is None:
                raise
        return self.models.get(explained[0], version), explained[1]

    def _explanation_name(self, name: str) -> tuple[str, str] | None:
        """(classifier, method) when `name` is not a model of the server but `CLASSIFIER.METHOD`
        of one it knows."""
        if name in self.models.names():
            return None
        explained = explanation_name(name, GRAPH_METHODS)
        return explained if explained is not None and explained[0] in self.models.names() else None

    async def _infer_explanation(
        self, served: LoadedVersion, method: str, request: InferRequest, deadline: float | None
    ) -> InferResponse:
        """ModelInfer on `served`'s explanation model for `method` (see
        `cnnzoo.serving.explanation_infer`), bounded as Explain is."""
        with self._admission.call(deadline, explanation=True) as call:
            call.shorten(request.timeout_us)
            graph = await self.explanations.get(served, method)
            call.count(graph.stats)
            rows, wanted = infer_explanation(graph, request, self._input_region)
            targets = [
                self._output_region(o.shared_memory) if o.shared_memory else None for o, _ in wanted
            ]
            future = graph.batcher.enqueue(rows, call.deadline)
            records = await _run(served, future)
            return explanation_response(
                graph, served.version_str, request, records, wanted, targets
            )

    def _input_region(self, ref: SharedMemoryRef) -> memoryview:
        return self.shared_memory_registry().read(ref)

    def _output_region(self, ref: SharedMemoryRef) -> RegionWriter:
        return self.shared_memory_registry().writer(ref)

    async def classify(
        self,
        name: str,
        version: str,
        images: Sequence[bytes],
        top_k: int = 0,
        deadline: float | None = None,
    ) -> ClassifyResult:
        """Top-k classes with softmax probabilities for each encoded image (`deadline`: as for
        `infer`). The call counts in the model's statistics from when its images are decoded."""
        if not name:
            raise InvalidInput("the request names no model")
        if top_k < 0:
            raise InvalidInput(f"top_k must be >= 1 (0 means {DEFAULT_TOP_K}), got {top_k}")
        limit = self.limits.max_classify_images
        if len(images) > limit:
            raise over_limit(
                "the images of the request", len(images), limit, "--max-classify-images"
            )
        served = self.models.get(name, version)
        with self._admission.call(deadline) as call:
            batch = await self._decode(served, images, call.deadline)
            # Look the model up again: a hot reload may have switched versions while decoding.
            served = self.models.get(name, version)
            call.count(served.stats)
            logits = await self._run_in_batches(served, batch, call.deadline)
            probabilities = softmax(logits)
            k = min(top_k or DEFAULT_TOP_K, probabilities.shape[1])
            results = [
                [ClassPrediction(int(i), served.label(i), float(row[i])) for i in order]
                for row, order in zip(probabilities, top_k_indices(probabilities, k), strict=True)
            ]
            return ClassifyResult(served.name, served.version_str, results)

    async def _decode(
        self,
        served: LoadedVersion,
        images: Sequence[bytes],
        deadline: float | None,
        operation: str = "Classify",
        pixels: bool = False,
    ) -> np.ndarray:
        """A call's images as one input batch (decoded on the decoding threads, a part of at
        most `PART_PIXELS` pixels per turn); `pixels`: the uint8 pixels before scaling and
        normalisation, whatever the model takes."""
        preprocess = served.image_preprocess(operation)
        max_pixels = self.limits.max_request_pixels
        # A model exported with --input-dtype uint8 takes pixels: it normalises them.
        as_pixels = pixels or served.spec.input.datatype == "UINT8"
        if len(images) == 1:  # one turn for all of it
            return await self._decoding(
                functools.partial(
                    images_to_batch,
                    list(images),
                    preprocess,
                    max_pixels=max_pixels,
                    deadline=deadline,
                    as_pixels=as_pixels,
                ),
                deadline,
            )
        opened = await self._decoding(
            functools.partial(open_images, list(images), max_pixels), deadline
        )
        convert = functools.partial(
            convert_images, opened, preprocess, deadline=deadline, as_pixels=as_pixels
        )
        parts = [
            asyncio.ensure_future(self._decoding(functools.partial(convert, part), deadline))
            for part in pixel_parts(opened)
        ]
        try:
            arrays = [array for part in parts for array in await part]
        finally:
            for part in parts:
                part.cancel()  # the rest of a failed request is not decoded
        return np.stack(arrays)

    async def _decoding(self, work: Callable[[], T], deadline: float | None) -> T:
        """`work()` on a decoding thread, when it is this caller's turn."""
        await self._decode_turns.enter(deadline)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._decode_pool, work)
        finally:
            self._decode_turns.leave()

    @staticmethod
    async def _run_in_batches(
        served: LoadedVersion, batch: np.ndarray, deadline: float | None
    ) -> np.ndarray:
        """The model's outputs for a batch of any size, run in batches it takes."""
        step = served.spec.max_batch_size
        starts = range(0, len(batch), step)
        served.batcher.check_room(len(starts))  # all of the request's batches, or none
        futures = [served.batcher.enqueue(batch[i : i + step], deadline) for i in starts]
        outputs: list[np.ndarray] = []
        for chunk in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(chunk, BaseException):
                raise _failure(served, chunk)
            outputs.append(chunk)
        return np.concatenate(outputs)

    async def explain(
        self,
        name: str,
        version: str,
        image: bytes,
        method: str,
        target: int | None,
        deadline: float | None = None,
        layer: str = "",
        quality: bool = False,
        channel: int | None = None,
        position: tuple[int, int] | None = None,
    ) -> ExplainResult:
        """An attribution map for one image: one run of the classifier's explanation graph
        for `method` on ONNX Runtime, batched with concurrent Explain calls of the same model
        and method (see `cnnzoo.serving.explain`).

        At most `max_pending_explanations` explanations are in progress (more:
        `ResourceExhausted`). `deadline` (`time.monotonic()` seconds): one that passes while the
        call waits to run answers `DeadlineExceeded`, and nothing runs for it. `quality`: also
        the map's quality figures, whose model calls go through the classifier's batcher
        (`cnnzoo.serving.explain_quality`). `channel`, `position`: the unit of `layer` the
        unit methods project (position None: the channel's strongest for the image).
        """
        served = self.models.get(name, version)
        asked = check_request(served, method, target, layer, channel, position)
        if quality and method in UNIT_METHODS:
            raise InvalidInput("quality figures are for class explanations, not unit projections")
        with self._admission.call(deadline, explanation=True) as call:
            batch = await self._decode(served, [image], call.deadline, "Explain")
            graph = await self.explanations.get(served, asked.method)
            row = graph.row(batch[0], asked)
            if quality:
                check_quality(served)
            try:
                record = await graph.batcher.submit(row, call.deadline)
            except Exception as err:
                raise _failure(served, err) from err
            # the map's PNG is encoded on an image thread, not on the event loop
            result = await self._decoding(lambda: graph.result(served, record[0]), call.deadline)
            if not quality:
                return result
            figures = await explanation_quality(served, batch, result, call.deadline)
            return dataclasses.replace(result, quality=figures)

    async def activations(
        self,
        name: str,
        version: str,
        image: bytes,
        layers: Sequence[str] = (),
        deadline: float | None = None,
    ) -> ActivationsResult:
        """Every layer's channel maps for one image (`layers`: only these, by name), from one
        run of the classifier's activations graph, batched and bounded as Explain is (see
        `cnnzoo.serving.activations`)."""
        served = self.models.get(name, version)
        with self._admission.call(deadline, explanation=True) as call:
            pixels = await self._decode(served, [image], call.deadline, "Activations", True)
            graph = await self.explanations.get(served, "activations")
            entries = select_layers(json.loads(graph.facts.get("activations", "[]")), layers)
            model_input = pixels[0] if served.spec.input.datatype == "UINT8" else None
            if model_input is None:
                model_input = served.image_preprocess("Activations").normalise(pixels[0])
            row = graph.row(model_input, ExplainRequestCheck("activations", None, ""))
            try:
                record = (await graph.batcher.submit(row, call.deadline))[0]
            except Exception as err:
                raise _failure(served, err) from err
            maps = await self._decoding(
                lambda: tuple(layer_maps(e, record[e["output"]]) for e in entries), call.deadline
            )
            return ActivationsResult(served.name, served.version_str, input_png(pixels[0]), maps)

    async def close_explanations(self) -> None:
        """Finish the explanations in progress and stop their graphs (at shutdown)."""
        await self.explanations.close()


# -- helpers -------------------------------------------------------------------------------------


async def _run(served: LoadedVersion, future: asyncio.Future[np.ndarray]) -> np.ndarray:
    try:
        return await future
    except Exception as err:
        raise _failure(served, err) from err


def _failure(served: LoadedVersion, err: BaseException) -> BaseException:
    """Errors from the model call become a `ModelExecutionError` naming the model."""
    if isinstance(err, CnnzooError) or not isinstance(err, Exception):
        return err  # ours already, or a cancellation
    return ModelExecutionError(
        f"model {served.name!r} version {served.version} failed to run: {err}"
    )


def _tensor_info(spec: TensorSpec) -> TensorInfo:
    return TensorInfo(spec.name, spec.datatype, tuple(spec.shape_with_batch()))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probabilities
