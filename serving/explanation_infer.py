"""ModelInfer on the explanation models (`MODEL.METHOD`, e.g. `lenet5-mnist.grad-cam`): the
KServe v2 call Triton answers on the same repository, answered by the graph Explain runs.

An explanation model has several inputs (the image, `target`, or `layer` / `channel` /
`position`) and several outputs (the map, the logits, ...), which the classifiers' data plane
(one input, one output) does not carry; this module decodes each input with the same checks as
a classifier's (`cnnzoo.serving.tensors`), runs the rows on the graph's own batcher (so ModelInfer
and Explain calls of one model and method share batches) and encodes the outputs asked for. The
graph is the repository's explanation model of the served classifier version (checked against it
by sha256) or, where there is none, built from the classifier, as for Explain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cnnzoo.errors import InvalidInput, quoted
from cnnzoo.serving.explain import ExplanationGraph
from cnnzoo.serving.spec import TensorSpec
from cnnzoo.serving.tensors import OutputRegion, RowLayout, decode_input, encode_output
from cnnzoo.serving.types import InferRequest, InferResponse, RequestedOutput, SharedMemoryRef

__all__ = ["explanation_name", "explanation_response", "infer_explanation"]


def explanation_name(name: str, methods: tuple[str, ...]) -> tuple[str, str] | None:
    """(classifier, method) when `name` is `CLASSIFIER.METHOD` for a known method, else None."""
    classifier, dot, method = name.rpartition(".")
    return (classifier, method) if dot and classifier and method in methods else None


def infer_explanation(
    graph: ExplanationGraph,
    request: InferRequest,
    region: Callable[[SharedMemoryRef], memoryview],
) -> tuple[np.ndarray, list[tuple[RequestedOutput, TensorSpec]]]:
    """The request's rows for `graph`'s batcher and the outputs it asks for, checked.

    Raises:
        InvalidInput: a missing, unknown or badly shaped input, inputs of different batch
            sizes, an unknown output, classification asked of an output.
    """
    inputs = {spec.name: spec for spec in graph.input_specs}
    given = {tensor.name: tensor for tensor in request.inputs}
    missing = sorted(set(inputs) - set(given))
    unknown = sorted(set(given) - set(inputs))
    if missing or unknown or len(given) != len(request.inputs):
        raise InvalidInput(
            f"model {graph.name!r} takes the inputs {', '.join(inputs)} (once each); the request "
            f"has {', '.join(t.name for t in request.inputs) or 'none'}"
        )
    limit = graph.max_batch_size
    arrays = {
        name: decode_input(given[name], spec, limit, graph.name, region)
        for name, spec in inputs.items()
    }
    sizes = {len(array) for array in arrays.values()}
    if len(sizes) != 1:
        raise InvalidInput(f"the inputs of model {graph.name!r} must have one batch size")
    rows = np.zeros(sizes.pop(), dtype=graph.row_dtype)
    for name, array in arrays.items():
        rows[name] = array
    outputs = {spec.name: spec for spec in graph.output_specs}
    wanted = request.outputs or [RequestedOutput(name) for name in outputs]
    for output in wanted:
        if output.name not in outputs:
            raise InvalidInput(
                f"model {graph.name!r} has no output {quoted(output.name)}; its outputs: "
                f"{', '.join(outputs)}"
            )
        if output.classification:
            raise InvalidInput(f"model {graph.name!r} answers no classification")
    return rows, [(output, outputs[output.name]) for output in wanted]


def explanation_response(
    graph: ExplanationGraph,
    version: str,
    request: InferRequest,
    records: np.ndarray,
    wanted: list[tuple[RequestedOutput, TensorSpec]],
    targets: Sequence[OutputRegion | None],
) -> InferResponse:
    """The answer: each asked output of the records, in the request's shared memory where it
    names a region."""
    layout = RowLayout()
    outputs = [
        encode_output(np.ascontiguousarray(records[spec.name]), output, target, spec, (), layout)
        for (output, spec), target in zip(wanted, targets, strict=True)
    ]
    return InferResponse(graph.name, version, request.id, outputs)
