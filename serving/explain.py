"""Explain on ONNX Runtime: a served classifier's explanation graphs, batched like any model.

An explanation is one run of an ONNX graph that computes the classifier's forward pass and a
method's backward rule (`cnnzoo.interpret.graphs`): no PyTorch in the server. For a classifier
version and a method the graph comes from the repository's explanation model `MODEL.METHOD`
(same version, written by `cnnzoo export` or `cnnzoo explain-export`), checked against the
classifier's model.onnx by its recorded sha256; where the repository has none (a repository
laid out for Triton by other means), it is built in memory from the classifier's model.onnx the
first time it is asked for. Each graph gets an ONNX Runtime session on the served device (the
same no-silent-fall-back rule as the classifiers) behind its own `DynamicBatcher`: a request's
row is a numpy structured record (image, target, layer), so concurrent Explain calls of one
model and method run as one batch, with the batcher's deadlines and queue bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnzoo.errors import InvalidInput, quoted
from cnnzoo.interpret.graphs.methods import GRAPH_METHODS
from cnnzoo.serving.batcher import DynamicBatcher
from cnnzoo.serving.runtime import CUDA, RuntimeOptions, available_cores, create_session
from cnnzoo.serving.spec import TensorSpec
from cnnzoo.serving.stats import ModelStats
from cnnzoo.serving.types import ExplainResult
from cnnzoo.serving.version import LoadedVersion

__all__ = [
    "CLASS_METHODS",
    "EXPLAIN_METHODS",
    "GRAPH_METHODS",
    "UNIT_METHODS",
    "ExplanationGraph",
    "ExplanationGraphs",
    "check_request",
]

log = logging.getLogger(__name__)

# The class-score methods, and the unit projections (a layer, channel and position instead of
# a class: Zeiler & Fergus Fig. 2 for one image).
CLASS_METHODS: tuple[str, ...] = (
    "gradient",
    "deconvnet",
    "guided-backprop",
    "input-x-gradient",
    "integrated-gradients",
    "grad-cam",
    "guided-grad-cam",
    "occlusion",
)
UNIT_METHODS: tuple[str, ...] = ("deconvnet-unit", "guided-backprop-unit", "gradient-unit")
EXPLAIN_METHODS: tuple[str, ...] = CLASS_METHODS + UNIT_METHODS
_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(uint8)": np.uint8,
    "tensor(int64)": np.int64,
    "tensor(float16)": np.float16,
}


@dataclass(frozen=True)
class ExplainRequestCheck:
    """An Explain request found sound: its method, target (None: the predicted class), layer
    name ("" : the graph's default) and, for a unit method, the channel and position (None:
    the channel's strongest for the image)."""

    method: str
    target: int | None
    layer: str
    channel: int = -1
    position: tuple[int, int] | None = None


def check_request(
    served: LoadedVersion,
    method: str,
    target: int | None,
    layer: str,
    channel: int | None = None,
    position: tuple[int, int] | None = None,
) -> ExplainRequestCheck:
    """Refuse what no graph run can answer, before any image is decoded.

    Raises:
        InvalidInput: an unknown method, a target outside the classes, a layer for a method
            that takes none, a unit method without a channel or with a target, a channel or
            position for a class method.
    """
    if method not in EXPLAIN_METHODS:
        raise InvalidInput(
            f"unknown method {quoted(method)}; Explain answers {', '.join(EXPLAIN_METHODS)}"
        )
    if method in UNIT_METHODS:
        return _check_unit(method, target, layer, channel, position)
    if channel is not None or position is not None:
        raise InvalidInput(
            f"method {method!r} explains a class; a channel and position are for the unit "
            f"methods ({', '.join(UNIT_METHODS)})"
        )
    classes = served.spec.output.dims[-1] if served.spec.output.dims else 0
    if target is not None and not 0 <= target < classes:
        raise InvalidInput(
            f"target {target} is not a class of {served.name!r} (0 to {classes - 1})"
        )
    if layer and method not in ("grad-cam", "guided-grad-cam"):
        raise InvalidInput(
            f"method {method!r} takes no layer (grad-cam, guided-grad-cam and the unit methods do)"
        )
    return ExplainRequestCheck(method, target, layer)


def _check_unit(
    method: str,
    target: int | None,
    layer: str,
    channel: int | None,
    position: tuple[int, int] | None,
) -> ExplainRequestCheck:
    if target is not None:
        raise InvalidInput(f"method {method!r} projects a unit, not a class: it takes no target")
    if channel is None or channel < 0:
        raise InvalidInput(f"method {method!r} needs a channel (0 or more) of the layer")
    if position is not None and min(position) < 0:
        raise InvalidInput(f"a unit's position (y, x) must not be negative, got {position}")
    return ExplainRequestCheck(method, None, layer, channel, position)


class ExplanationGraph:
    """One explanation graph of one served classifier version, on ONNX Runtime behind its own
    dynamic batcher (see the module docstring).

    Args:
        served: the classifier version it explains.
        method: the method's name.
        model: the explanation model's serialised ONNX bytes.
        origin: where it came from, for logs and errors.
        options: how the session is created (the served device).
    """

    def __init__(
        self,
        served: LoadedVersion,
        method: str,
        model: bytes,
        origin: str,
        options: RuntimeOptions,
    ) -> None:
        self.name = f"{served.name}.{method}"
        self.method = method
        self.origin = origin
        self.session, self.provider, _ = create_session(model, options, origin)
        facts = self.session.get_modelmeta().custom_metadata_map
        self.layers: list[dict[str, Any]] = json.loads(facts.get("layers", "[]"))
        self.warnings: tuple[str, ...] = tuple(json.loads(facts.get("warnings", "[]")))
        self.default_layer = facts.get("default_layer", "")
        self.facts = facts
        inputs = self.session.get_inputs()
        self.image_input = inputs[0].name
        self.row_dtype = np.dtype(
            [(i.name, _NUMPY[i.type], tuple(int(d) for d in i.shape[1:])) for i in inputs]
        )
        self._output_names = [o.name for o in self.session.get_outputs()]
        # One run of a zero row: the outputs' shapes (some may be symbolic in the graph) and
        # the session's first-run cost paid before a caller waits for it.
        outputs = self.session.run(self._output_names, self._feeds(np.zeros(1, self.row_dtype)))
        self.out_dtype = np.dtype(
            [(n, o.dtype, o.shape[1:]) for n, o in zip(self._output_names, outputs, strict=True)]
        )
        # Its interface as a model of its own (ModelMetadata, ModelConfig, ModelInfer).
        self.input_specs = _specs(self.row_dtype)
        self.output_specs = _specs(self.out_dtype)
        self.stats = ModelStats(self.name, served.version_str)
        # Integrated gradients runs each image `steps` times, occlusion once per position of
        # the square: the classifier's batch bound counts those copies.
        copies = {"integrated-gradients": "steps", "occlusion": "positions"}.get(method)
        per_image = int(facts.get(copies, "1")) if copies else 1
        self.max_batch_size = max(1, max(1, served.spec.max_batch_size) // per_image)
        self.batcher = DynamicBatcher(
            self._run,
            max_batch_size=self.max_batch_size,
            max_queue_size=served.batcher.max_queue_size,
            stats=self.stats,
            instances=_parallel_batches(options, self.provider),
            name=f"{self.name}-{served.version}",
        )

    def _feeds(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        names = self.row_dtype.names or ()
        return {name: np.ascontiguousarray(rows[name]) for name in names}

    def _run(self, rows: np.ndarray) -> np.ndarray:
        outputs = self.session.run(self._output_names, self._feeds(rows))
        result = np.empty(len(rows), dtype=self.out_dtype)
        for name, value in zip(self._output_names, outputs, strict=True):
            result[name] = value
        return result

    def row(self, image: np.ndarray, asked: ExplainRequestCheck) -> np.ndarray:
        """One request's record: the image, the target (-1: the predicted class), the
        layer's index (-1: the default), a unit's channel and position ((-1, -1): the
        channel's strongest).

        Raises:
            LayerNotFound: no such layer (the message lists them).
            InvalidInput: a channel or position outside the layer's output.
        """
        from cnnzoo.interpret.graphs import layer_index

        row = np.zeros(1, dtype=self.row_dtype)
        row[self.image_input] = image
        fields = self.row_dtype.names or ()
        if "target" in fields:
            row["target"] = -1 if asked.target is None else asked.target
        index = layer_index(self.layers, asked.layer) if asked.layer else -1
        if "layer" in fields:
            row["layer"] = index
        if "channel" in fields:
            chosen = index if index >= 0 else layer_index(self.layers, self.default_layer)
            self._check_unit(self.layers[chosen], asked)
            row["channel"] = asked.channel
            row["position"] = asked.position or (-1, -1)
        return row

    @staticmethod
    def _check_unit(layer: dict[str, Any], asked: ExplainRequestCheck) -> None:
        shape = layer["shape"]
        if asked.channel >= shape[0]:
            raise InvalidInput(
                f"channel {asked.channel} is not in layer {layer['name']!r} "
                f"({shape[0]} channels: 0 to {shape[0] - 1})"
            )
        if asked.position is None:
            return
        if len(shape) == 1:
            raise InvalidInput(
                f"layer {layer['name']!r} is flat ({shape[0]} features): no position"
            )
        y, x = asked.position
        if not (y < shape[1] and x < shape[2]):
            raise InvalidInput(
                f"position ({y}, {x}) is outside layer {layer['name']!r}'s "
                f"{shape[1]}x{shape[2]} map"
            )

    def result(self, served: LoadedVersion, record: np.void) -> ExplainResult:
        """The Explain answer for one output record."""
        from cnnzoo.interpret.graphs import attribution_png, projection_png

        attribution = np.asarray(record["attribution"], dtype=np.float32)
        logits = np.asarray(record["logits"], dtype=np.float64)
        unit = "unit_position" in (record.dtype.names or ())
        if unit:  # a unit's projection: the score is the predicted class's
            target = int(logits.argmax())
            position = tuple(int(v) for v in np.asarray(record["unit_position"]).reshape(-1))
            activation = float(np.asarray(record["unit_activation"]).reshape(-1)[0])
        else:
            target = int(np.asarray(record["target_used"]).reshape(-1)[0])
        shifted = np.exp(logits - logits.max())
        return ExplainResult(
            model=served.name,
            version=served.version_str,
            method=self.method,
            target=target,
            label=served.label(target),
            score=float(shifted[target] / shifted.sum()),
            png=projection_png(attribution) if unit else attribution_png(attribution),
            attribution=attribution.sum(axis=0, dtype=np.float32),
            warnings=self.warnings,
            unit_position=position if unit else None,
            unit_activation=activation if unit else None,
        )


class ExplanationGraphs:
    """The explanation graphs of the served versions, made on first use and closed with the
    version they explain (or the server).

    Args:
        options: how sessions are created (the served device).
    """

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        self._graphs: dict[tuple[str, int, str], tuple[LoadedVersion, ExplanationGraph]] = {}
        self._making: dict[tuple[str, int, str], asyncio.Future[ExplanationGraph]] = {}

    def built(self, served: LoadedVersion | None = None) -> list[ExplanationGraph]:
        """The graphs made so far (of `served` only, when given)."""
        return [g for v, g in self._graphs.values() if served is None or v is served]

    async def get(self, served: LoadedVersion, method: str) -> ExplanationGraph:
        """`served`'s graph for `method` (its batcher started), made once even when several
        calls ask at the same time.

        Raises:
            IntegrityError: the repository's explanation model was built from another
                classifier (its sha256 differs: the message says to rebuild it).
            UnsupportedModel: the classifier has an operator or activation the method's
                transformation cannot follow (the message names the node).
        """
        key = (served.name, served.version, method)
        found = self._graphs.get(key)
        if found is not None and found[0] is served:
            return found[1]
        await self._drop_others(served)
        making = self._making.get(key)
        if making is None:
            making = asyncio.get_running_loop().create_future()
            self._making[key] = making
            try:
                graph = await asyncio.to_thread(self._make, served, method)
                graph.batcher.start()
                stale = self._graphs.get(key)
                self._graphs[key] = (served, graph)
                if stale is not None:
                    await stale[1].batcher.close()
                making.set_result(graph)
            except BaseException as err:
                making.set_exception(err)
                making.exception()  # retrieved: a failure reaches the waiting callers only
                raise
            finally:
                del self._making[key]
        return await asyncio.shield(making)

    def _make(self, served: LoadedVersion, method: str) -> ExplanationGraph:
        repository = served.repository
        classifier_path = repository.version_dir(served.name, served.version) / "model.onnx"
        classifier = classifier_path.read_bytes()
        exported = repository.root / f"{served.name}.{method}" / str(served.version) / "model.onnx"
        if exported.is_file():
            import onnx

            from cnnzoo.interpret.graphs import check_classifier

            model = exported.read_bytes()
            check_classifier(onnx.load_from_string(model), hashlib.sha256(classifier).hexdigest())
            origin = str(exported)
        else:
            import onnx

            from cnnzoo.interpret.graphs import build_explanation

            built = build_explanation(
                onnx.load_from_string(classifier),
                method,
                explains=served.name,
                classifier_sha256=hashlib.sha256(classifier).hexdigest(),
            )
            model = built.SerializeToString()
            origin = f"{served.name}.{method} (built from {classifier_path})"
        graph = ExplanationGraph(served, method, model, origin, self.options)
        log.info("explaining %s version %d with %s on %s", served.name, served.version, origin,
                 graph.provider)  # fmt: skip
        return graph

    async def _drop_others(self, served: LoadedVersion) -> None:
        """Close the graphs of `served`'s model made for another version (a hot reload)."""
        for key, (other, graph) in list(self._graphs.items()):
            if other.name == served.name and other is not served:
                del self._graphs[key]
                await graph.batcher.close()

    async def retire(self, current: dict[str, LoadedVersion]) -> None:
        """Close the graphs of versions no longer served (`current`: name -> served version)."""
        for key, (served, graph) in list(self._graphs.items()):
            if current.get(served.name) is not served:
                del self._graphs[key]
                await graph.batcher.close()

    async def close(self) -> None:
        """Finish the queued explanations and stop every graph's batcher."""
        await self.retire({})


_DATATYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "uint8": "UINT8"}


def _specs(dtype: np.dtype) -> list[TensorSpec]:
    """The fields of a record type as tensors (their shapes without the batch dimension)."""
    fields: dict[str, Any] = dict(dtype.fields or {})
    return [
        TensorSpec(name, _DATATYPES[str(field[0].base)], tuple(int(d) for d in field[0].shape))
        for name, field in fields.items()
    ]


def _parallel_batches(options: RuntimeOptions, provider: str) -> int:
    """Batches an explanation graph runs at once: one on a GPU; on the CPU one per core (with
    `--intra-op-threads N`, one per N cores), sharing the session's threads. A forward and a
    backward pass leave cores idle between operators that a second batch fills: on 2 cores at 16
    concurrent calls (perf_analyzer), resnet20's guided backprop answers 510 images/s so against
    360 one batch at a time (the graph alone in process: 617), and a single call is as fast as
    before (resnet18: 19.7 images/s at 1 and 16 calls)."""
    if provider == CUDA:
        return 1
    return max(1, available_cores() // max(1, options.intra_op_threads))
