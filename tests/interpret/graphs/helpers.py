"""Helpers for the explanation-graph tests: small PyTorch models to ONNX, explanation graphs
run in ONNX Runtime (float32) or in onnx's reference runtime (any precision, numpy), and the
comparison with PyTorch that tells real differences from float32 ties."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

from cnnzoo.interpret.graph_export.parity import map_differences
from cnnzoo.interpret.graphs import build_explanation

TOLERANCE = 1e-5  # max |graph - reference| / max |reference|, per map


def to_onnx(model: nn.Module, example: torch.Tensor, opset: int = 17) -> onnx.ModelProto:
    """`model` as ONNX with a dynamic batch axis, through torch.onnx's TorchScript exporter
    (fast, and an opset below 18, so the version upgrade runs too)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        torch.onnx.export(
            model.eval(),
            (example,),
            buffer,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
            opset_version=opset,
        )
    return onnx.load_from_string(buffer.getvalue())


def dynamo_onnx(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """`model` as ONNX through torch.onnx's torch.export-based exporter (what `cnnzoo export`
    uses), with a dynamic batch axis."""
    from torch.export import Dim

    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes={"x": {0: Dim("batch", min=1, max=1024)}},
            verbose=False,
        )
    return program.model_proto


def ort_session(graph: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        graph.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def run(graph: onnx.ModelProto, feeds: dict[str, Any], runtime: str = "ort") -> dict[str, Any]:
    """Outputs by name; `runtime` "ort" (ONNX Runtime CPU) or "reference" (onnx.reference)."""
    names = [o.name for o in graph.graph.output]
    if runtime == "ort":
        return dict(zip(names, ort_session(graph).run(None, feeds), strict=True))
    return dict(zip(names, ReferenceEvaluator(graph).run(None, feeds), strict=True))


def feeds_for(
    graph: onnx.ModelProto,
    x: np.ndarray,
    *,
    target: int | Sequence[int] | None = None,
    layer: int | Sequence[int] = -1,
    channel: int | Sequence[int] = 0,
    position: Sequence[int] | np.ndarray = (-1, -1),
) -> dict[str, Any]:
    """Inputs for an explanation graph: the image and whichever of target/layer/channel/position
    it takes (scalars repeated per row)."""
    n = len(x)
    feeds: dict[str, Any] = {graph.graph.input[0].name: x}
    names = {i.name for i in graph.graph.input}

    def column(value: Any, width: int = 1) -> np.ndarray:
        array = np.asarray(value, dtype=np.int64)
        if array.ndim == 0 or (width > 1 and array.ndim == 1):
            array = np.broadcast_to(array, (n, width))
        return np.ascontiguousarray(array.reshape(n, width))

    if "target" in names:
        feeds["target"] = column(-1 if target is None else target)
    if "layer" in names:
        feeds["layer"] = column(layer)
    if "channel" in names:
        feeds["channel"] = column(channel)
    if "position" in names:
        feeds["position"] = column(position, 2)
    return feeds


def explain(
    classifier: onnx.ModelProto,
    method: str,
    x: np.ndarray,
    runtime: str = "ort",
    settings: dict[str, Any] | None = None,
    **inputs: Any,
) -> dict[str, Any]:
    """Build `method`'s graph for `classifier` and run it on `x`."""
    graph = build_explanation(classifier, method, **(settings or {}))
    return run(graph, feeds_for(graph, x, **inputs), runtime)


# -- telling float32 ties from real differences -------------------------------------------------


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """PyTorch's ReLU and max-pooling decisions while `model` runs, in call order: ("relu",
    input) and ("pool", argmax indices within each plane)."""
    events: list[tuple[str, torch.Tensor]] = []
    handles = []
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, args: events.append(("relu", args[0].detach().clone()))
                )
            )
        elif isinstance(module, nn.MaxPool2d):

            def pool(m: nn.MaxPool2d, args: tuple, out: torch.Tensor) -> None:
                _, indices = nn.functional.max_pool2d(
                    args[0], m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                    return_indices=True,
                )  # fmt: skip
                events.append(("pool", indices))

            handles.append(module.register_forward_hook(pool))
    try:
        yield events
    finally:
        for handle in handles:
            handle.remove()


def decisions_agree(
    classifier: onnx.ModelProto, model: nn.Module, graph_input: np.ndarray, x: torch.Tensor
) -> np.ndarray:
    """Per row, whether ONNX Runtime and PyTorch take the same ReLU (sign of every input) and
    max-pooling (argmax of every window) decisions on this input. Where they do not, a
    pre-activation lies within rounding of zero (or a window holds two maxima within rounding),
    and a map legitimately differs by that unit's contribution."""
    probe = onnx.ModelProto()
    probe.CopyFrom(classifier)
    kinds = []
    for node in probe.graph.node:
        if node.op_type == "Relu":
            kinds.append(("relu", node.input[0], None))
        elif node.op_type == "MaxPool":
            while len(node.output) < 2:
                node.output.append(f"{node.output[0]}__switches")
            for attribute in list(node.attribute):
                if attribute.name == "storage_order":
                    node.attribute.remove(attribute)
            kinds.append(("pool", node.output[1], node.input[0]))
    for _, name, _ in kinds:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    for kind, _, source in kinds:
        if kind == "pool":
            probe.graph.output.append(onnx.ValueInfoProto(name=source))
    outputs = ort_session(probe).run(None, {classifier.graph.input[0].name: graph_input})
    found = outputs[1 : 1 + len(kinds)]
    pool_inputs = iter(outputs[1 + len(kinds) :])
    with recording(model) as events, torch.no_grad():
        model(x)
    assert [e[0] for e in events] == [k[0] for k in kinds], "cannot align the decisions"
    agree = np.ones(len(x), dtype=bool)
    for (kind, _, _), mine, (_, theirs) in zip(kinds, found, events, strict=True):
        theirs = theirs.numpy()
        if kind == "relu":
            same = ((mine > 0) == (theirs > 0)).reshape(len(x), -1).all(axis=1)
        else:
            plane = int(np.prod(next(pool_inputs).shape[2:]))
            same = (mine % plane == theirs).reshape(len(x), -1).all(axis=1)
        agree &= same
    return agree


def assert_maps_match(
    got: np.ndarray,
    expected: np.ndarray,
    agree: np.ndarray | None = None,
    tolerance: float = TOLERANCE,
    floor: float | np.ndarray = 0.0,
    least: float = 0.5,
) -> list[float]:
    """Every map within `tolerance` of the reference (relative to its largest |value|, plus an
    absolute `floor`), except maps of rows where the runtimes took different decisions
    (`agree` False); a share `least` of the rows must agree, so the check keeps its teeth.
    Returns the per-map relative differences."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert np.isfinite(got).all()
    differences = map_differences(got, expected)
    floors = np.broadcast_to(np.asarray(floor, dtype=np.float64), (len(got),))
    bad = [
        i
        for i, (a, r) in enumerate(zip(got, expected, strict=True))
        if np.abs(a - r).max() > tolerance * np.abs(r).max() + floors[i]
    ]
    if agree is None:
        agree = np.ones(len(got), dtype=bool)
    unexplained = [i for i in bad if agree[i]]
    assert not unexplained, (
        f"maps {unexplained} differ by {[differences[i] for i in unexplained]} (> {tolerance}) "
        "where both runtimes took the same decisions"
    )
    assert agree.mean() >= least, f"only {agree.sum()} of {len(agree)} rows decide alike"
    return differences
