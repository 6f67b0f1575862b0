"""The inference data plane: live/ready/metadata/infer/classify for any transport.

It checks requests against the model's spec (names, datatypes, rank, shape, batch size, byte
length), runs them through the model's batcher and shapes the answers (raw tensors, the
classification extension, softmax top-k). Errors are `CnnzooError`s with reasons that name the
expected value; the transport maps them to status codes. No protobuf or gRPC in here.
"""

from __future__ import annotations

import asyncio
import functools
import math
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cnnzoo.errors import (
    CnnzooError,
    InvalidInput,
    ModelExecutionError,
    NotFound,
    Unavailable,
    quoted,
)
from cnnzoo.serving.explain import explain_image
from cnnzoo.serving.images import images_to_batch
from cnnzoo.serving.limits import InFlight, RequestLimits, over_limit
from cnnzoo.serving.model_manager import LoadedVersion, ModelManager
from cnnzoo.serving.shared_memory import SystemSharedMemory
from cnnzoo.serving.spec import TensorSpec
from cnnzoo.serving.stats import ModelStats, failure_reason
from cnnzoo.serving.types import (
    ClassifyResult,
    ClassPrediction,
    ExplainResult,
    IndexEntry,
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelSummary,
    RequestedOutput,
    SharedMemoryRef,
    TensorInfo,
)

__all__ = [
    "DEFAULT_TOP_K",
    "EXTENSIONS",
    "DataPlane",
    "classification_strings",
    "serialize_bytes_tensor",
    "softmax",
    "top_k_indices",
]

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
        self._requests = InFlight(
            self.limits.max_concurrent_requests,
            "the requests in progress",
            "--max-concurrent-requests",
        )
        self._explanations = InFlight(
            self.limits.max_pending_explanations,
            "the explanations waiting to run",
            "--max-pending-explanations",
        )
        # Decoding uploads is CPU work in Pillow (releases the GIL); explanations hook the
        # torch model, so they run one at a time on their own thread.
        self._decode_pool = ThreadPoolExecutor(2, thread_name_prefix="decode")
        self._explain_pool = ThreadPoolExecutor(1, thread_name_prefix="explain")

    @property
    def requests_started(self) -> int:
        """Inference, Classify and Explain calls admitted so far."""
        return self._requests.started

    def close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._explain_pool.shutdown(wait=False, cancel_futures=True)
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
        record = self.models.record(name)
        current = record.current
        if self.draining or current is None:
            return False
        return not version or version == current.version_str

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
        return sorted({r.current.provider for r in self.models.records() if r.current})

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        served = self.models.get(name, version)
        spec = served.spec
        return ModelMetadata(
            name=name,
            versions=(served.version_str,),
            platform=spec.platform,
            inputs=(_tensor_info(spec.input),),
            outputs=(_tensor_info(spec.output),),
            execution_provider=served.provider,
        )

    def model_config(self, name: str, version: str = "") -> object:
        """The model's ModelConfig message, as read from its config.pbtxt."""
        return self.models.get(name, version).config

    def model_statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        if not name:
            if version:
                raise InvalidInput("a version needs a model name")
            return [r.current.stats for r in self.models.records() if r.current]
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
        served = self.models.get(request.model_name, request.model_version)
        started = time.perf_counter_ns()
        ok, reason = False, ""
        self._requests.enter()
        try:
            spec = served.spec
            if len(request.inputs) != 1:
                raise InvalidInput(
                    f"model {served.name!r} takes 1 input ({spec.input.name!r} "
                    f"{spec.input.datatype} {spec.input.shape_with_batch()}), "
                    f"the request has {len(request.inputs)}"
                )
            if request.timeout_us > 0:
                timeout = time.monotonic() + request.timeout_us / 1e6
                deadline = timeout if deadline is None else min(deadline, timeout)
            batch = _decode_input(
                request.inputs[0], spec.input, spec.max_batch_size, served.name, self._region
            )
            if not spec.batched:
                batch = batch[None]  # one row for the batcher; the runtime takes it off again
            wanted = _requested_outputs(request.outputs, spec.output, served.name)
            targets = [self._region(o.shared_memory) if o.shared_memory else None for o in wanted]
            future = served.batcher.enqueue(batch, deadline, may_run_now=True)
            logits = await _run(served, future)  # no wait when it ran at once
            outputs = [
                _encode_output(logits, out, target, served)
                for out, target in zip(wanted, targets, strict=True)
            ]
            ok = True
            return InferResponse(served.name, served.version_str, request.id, outputs)
        except BaseException as err:
            reason = failure_reason(err, deadline)
            raise
        finally:
            self._requests.leave()
            served.stats.record_request(ok, time.perf_counter_ns() - started, reason)

    def _region(self, ref: SharedMemoryRef) -> memoryview:
        return self.shared_memory_registry().view(ref)

    async def classify(
        self,
        name: str,
        version: str,
        images: Sequence[bytes],
        top_k: int = 0,
        deadline: float | None = None,
    ) -> ClassifyResult:
        """Top-k classes with softmax probabilities for each encoded image (`deadline`: as for
        `infer`)."""
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
        self._requests.enter()
        try:
            return await self._classify(served, name, version, images, top_k, deadline)
        finally:
            self._requests.leave()

    async def _classify(
        self,
        served: LoadedVersion,
        name: str,
        version: str,
        images: Sequence[bytes],
        top_k: int,
        deadline: float | None,
    ) -> ClassifyResult:
        """`classify` once the request is admitted: decode, run in batches, rank."""
        loop = asyncio.get_running_loop()
        batch = await loop.run_in_executor(
            self._decode_pool,
            functools.partial(
                images_to_batch,
                list(images),
                served.image_preprocess("Classify"),
                max_pixels=self.limits.max_request_pixels,
                deadline=deadline,
                # A model exported with --input-dtype uint8 takes pixels: it normalises them.
                as_pixels=served.spec.input.datatype == "UINT8",
            ),
        )
        # Look the model up again: a hot reload may have switched versions while decoding.
        served = self.models.get(name, version)
        started = time.perf_counter_ns()
        ok, reason = False, ""
        try:
            step = served.spec.max_batch_size
            starts = range(0, len(batch), step)
            served.batcher.check_room(len(starts))  # all of the request's batches, or none
            futures = [served.batcher.enqueue(batch[i : i + step], deadline) for i in starts]
            chunks = await asyncio.gather(*futures, return_exceptions=True)
            for chunk in chunks:
                if isinstance(chunk, BaseException):
                    raise _failure(served, chunk)
            logits = np.concatenate(chunks)
            probabilities = softmax(logits)
            k = min(top_k or DEFAULT_TOP_K, probabilities.shape[1])
            results = [
                [ClassPrediction(int(i), served.label(i), float(row[i])) for i in order]
                for row, order in zip(probabilities, top_k_indices(probabilities, k), strict=True)
            ]
            ok = True
            return ClassifyResult(served.name, served.version_str, results)
        except BaseException as err:
            reason = failure_reason(err, deadline)
            raise
        finally:
            served.stats.record_request(ok, time.perf_counter_ns() - started, reason)

    async def explain(
        self,
        name: str,
        version: str,
        image: bytes,
        method: str,
        target: int | None,
        deadline: float | None = None,
    ) -> ExplainResult:
        """An attribution map for one image (see `cnnzoo.serving.explain`).

        Explanations run one at a time; at most `max_pending_explanations` wait for their turn
        (more: `ResourceExhausted`). `deadline` (`time.monotonic()` seconds): an explanation
        whose caller has given up is not started (`DeadlineExceeded`).
        """
        served = self.models.get(name, version)
        explain = functools.partial(
            explain_image,
            served,
            image,
            method,
            target,
            max_pixels=self.limits.max_request_pixels,
            deadline=deadline,
        )
        self._requests.enter()
        try:
            self._explanations.enter()
            try:
                return await asyncio.get_running_loop().run_in_executor(self._explain_pool, explain)
            finally:
                self._explanations.leave()
        finally:
            self._requests.leave()


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


def _decode_input(
    tensor: InferInput,
    spec: TensorSpec,
    max_batch_size: int,
    model: str,
    region: Callable[[SharedMemoryRef], memoryview],
) -> np.ndarray:
    """Check one input tensor against the model and return it as an array (a view of the
    request's bytes or of a shared-memory region: no copy)."""
    where = f"input {tensor.name!r} of model {model!r}"
    expected_shape = spec.shape_with_batch()
    if tensor.name != spec.name:
        raise InvalidInput(
            f"model {model!r} has no input {quoted(tensor.name)}; its input is {spec.name!r} "
            f"{spec.datatype} {expected_shape}"
        )
    if tensor.datatype != spec.datatype:
        raise InvalidInput(f"{where} must be {spec.datatype}, got {quoted(tensor.datatype)}")
    shape = tensor.shape
    if len(shape) != len(expected_shape):
        raise InvalidInput(
            f"{where} must have rank {len(expected_shape)} (shape {expected_shape}), "
            f"got rank {len(shape)} (shape {_shape_text(shape)})"
        )
    if not spec.accepts(tuple(shape[1:]) if spec.batched else tuple(shape)):
        raise InvalidInput(f"{where} must have shape {expected_shape}, got {list(shape)}")
    if spec.batched:
        batch = shape[0]
        if batch < 1:
            raise InvalidInput(f"{where} has batch size {batch}; it must be at least 1")
        if batch > max_batch_size:
            raise InvalidInput(
                f"{where} has batch size {batch}, over the model's max_batch_size {max_batch_size}"
            )
    count = math.prod(shape)
    dtype = spec.wire_dtype
    needed = count * dtype.itemsize
    if tensor.shared_memory is not None:
        ref = tensor.shared_memory
        if tensor.raw is not None or tensor.values:
            raise InvalidInput(
                f"{where} names shared-memory region {ref.region!r} and also carries data; "
                "send one or the other"
            )
        if ref.byte_size != needed:
            raise InvalidInput(
                f"{where} has shared_memory_byte_size {ref.byte_size}; shape {list(shape)} "
                f"{spec.datatype} needs {needed}"
            )
        return np.frombuffer(region(ref), dtype=dtype).reshape(shape)
    if tensor.raw is not None:
        if len(tensor.raw) != needed:
            raise InvalidInput(
                f"{where} has {len(tensor.raw)} bytes of raw data; shape {list(shape)} "
                f"{spec.datatype} needs {needed}"
            )
        return np.frombuffer(tensor.raw, dtype=dtype).reshape(shape)
    if tensor.values:
        if len(tensor.values) != count:
            raise InvalidInput(
                f"{where} has {len(tensor.values)} values in its contents; shape "
                f"{list(shape)} needs {count}"
            )
        return np.asarray(tensor.values, dtype=dtype).reshape(shape)
    raise InvalidInput(
        f"{where} carries no data: send it in raw_input_contents, in its typed contents or in "
        "a shared-memory region"
    )


def _shape_text(shape: Sequence[int]) -> str:
    """A shape as a message shows it (a caller may send thousands of dimensions)."""
    if len(shape) <= 8:
        return str(list(shape))
    return f"[{', '.join(map(str, shape[:8]))}, ... ({len(shape)} dimensions)]"


def _requested_outputs(
    requested: list[RequestedOutput], spec: TensorSpec, model: str
) -> list[RequestedOutput]:
    if not requested:
        return [RequestedOutput(spec.name)]
    for output in requested:
        if output.name != spec.name:
            raise InvalidInput(
                f"model {model!r} has no output {quoted(output.name)}; its output is {spec.name!r}"
            )
        if output.classification < 0:
            raise InvalidInput(
                f"classification for output {output.name!r} must be a class count >= 1, "
                f"got {output.classification}"
            )
        if output.classification and output.shared_memory is not None:
            raise InvalidInput(
                f"output {output.name!r} asks for classification and a shared-memory region; "
                "classification answers are sent in the response"
            )
    return requested


def _encode_output(
    logits: np.ndarray,
    output: RequestedOutput,
    target: memoryview | None,
    served: LoadedVersion,
) -> InferOutput:
    batched = served.spec.output.batched
    if output.classification:
        scores = logits.reshape(len(logits), -1)  # e.g. [N, C, 1, 1] -> [N, C]
        k = min(output.classification, scores.shape[1])
        strings = classification_strings(scores, k, served.labels)
        shape = (len(logits), k) if batched else (k,)
        return InferOutput(output.name, "BYTES", shape, serialize_bytes_tensor(strings))
    if not batched:
        logits = logits[0]  # the batcher's row; the model has no batch dimension
    data = np.ascontiguousarray(logits, dtype=served.spec.output.dtype.newbyteorder("<"))
    datatype = served.spec.output.datatype
    if target is None:
        return InferOutput(output.name, datatype, logits.shape, data.tobytes())
    ref = output.shared_memory
    if data.nbytes > len(target):
        raise InvalidInput(
            f"output {output.name!r} needs {data.nbytes} bytes; shared-memory region "
            f"{ref.region!r} was given shared_memory_byte_size {len(target)}"  # type: ignore[union-attr]
        )
    target[: data.nbytes] = memoryview(data).cast("B")
    return InferOutput(output.name, datatype, logits.shape, b"", ref)


def classification_strings(scores: np.ndarray, k: int, labels: Sequence[str]) -> list[bytes]:
    """The classification extension: per row, the top-k as `b"score:index:label"`, best first.

    `score` is the output tensor's value (here the logit), formatted as Triton does (`%f`).
    """
    out: list[bytes] = []
    for row, order in zip(scores, top_k_indices(scores, k), strict=True):
        for index in order:
            label = labels[index] if index < len(labels) else ""
            text = f"{row[index]:f}:{index}:{label}" if label else f"{row[index]:f}:{index}"
            out.append(text.encode("utf-8"))
    return out


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row of `scores` `[N, C]`, the indices of the `k` largest, best first (ties: lower
    index first), as `[N, k]`."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def serialize_bytes_tensor(elements: Sequence[bytes]) -> bytes:
    """BYTES tensor wire format: each element prefixed by its 4-byte little-endian length."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
