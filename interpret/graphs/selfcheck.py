"""The checks an explanation model passes before it is written: its forward pass gives the
classifier's logits, its maps are finite, and the backward pass the transformation writes for
the classifier agrees with finite differences of the classifier itself.

The finite-difference check runs on ONNX Runtime only (no PyTorch): for a few random images x,
the gradient g of the predicted class's score from the `gradient` graph is compared with
(f(x + h d) - f(x - h d)) / 2h along d = g / |g| and two random unit directions, with
h = 1e-4 and 1e-5 times sqrt(size of x) (about 1e-4 and 1e-5 per element; the better of the
two counts). A ReLU network is linear between kinks, so the two agree up to the kinks the step
crosses and float32 rounding; the error is measured relative to |g| and must stay under
`FD_TOLERANCE` (fp32 graphs; fp16 graphs are recorded, not gated, their rounding being of the
step's order). A wrong backward rule gives errors of order 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from cnnzoo.errors import IntegrityError
from cnnzoo.interpret.graphs.build import build_explanation
from cnnzoo.interpret.graphs.classifier import Classifier

__all__ = ["FD_TOLERANCE", "LOGITS_TOLERANCE", "finite_differences", "self_check", "session"]

LOGITS_TOLERANCE = 1e-5  # |explanation logits - classifier logits| / max |classifier logits|
FD_TOLERANCE = 1e-2  # |finite difference - <g, d>| / |g|
_SAMPLES = 2
_STEPS = (1e-4, 1e-5)  # per element of the image


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """An ONNX Runtime CPU session, one thread per operator (results do not depend on it)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _images(info_shape: tuple[int, ...], dtype: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == TensorProto.UINT8:
        return rng.integers(0, 256, (count, *info_shape), dtype=np.uint8)
    if dtype in (TensorProto.INT8,):
        return rng.integers(-128, 128, (count, *info_shape), dtype=np.int8)
    numpy = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16,
             TensorProto.DOUBLE: np.float64}[dtype]  # fmt: skip
    return rng.standard_normal((count, *info_shape)).astype(numpy)


def default_feeds(explanation: onnx.ModelProto, images: np.ndarray, image: str) -> dict[str, Any]:
    """Inputs asking for each method's default: the predicted class, the default layer, the
    strongest position of channel 0."""
    count = len(images)
    feeds: dict[str, Any] = {image: images}
    for value in explanation.graph.input:
        if value.name == image:
            continue
        width = value.type.tensor_type.shape.dim[1].dim_value
        fill = 0 if value.name == "channel" else -1
        feeds[value.name] = np.full((count, width), fill, dtype=np.int64)
    return feeds


def self_check(
    classifier: onnx.ModelProto,
    explanation: onnx.ModelProto,
    *,
    gradient_check: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the checks; returns their figures (for the manifest).

    Args:
        gradient_check: `finite_differences(classifier)` when the caller has it already (it is
            the same for every explanation model of one classifier).

    Raises:
        IntegrityError: a check failed (the message says which and by how much).
    """
    cls = Classifier(classifier)
    half = _half(cls)
    images = _images(cls.image_info.sizes, cls.image_info.dtype, _SAMPLES + 2, seed)
    expected = session(classifier).run(None, {cls.image: images})[0].astype(np.float32)
    outputs = session(explanation).run(None, default_feeds(explanation, images, cls.image))
    named = dict(zip([o.name for o in explanation.graph.output], outputs, strict=True))
    scale = max(float(np.abs(expected).max()), 1e-12)
    logits = float(np.abs(named["logits"] - expected).max()) / scale
    tolerance = 1e-3 if half else LOGITS_TOLERANCE
    if not logits <= tolerance:
        raise IntegrityError(
            f"the explanation graph's logits differ from the classifier's by {logits:.3g} "
            f"(relative, > {tolerance}); nothing was written"
        )
    maps = [value for key, value in named.items() if key != "logits" and value.dtype.kind == "f"]
    if not all(np.isfinite(value).all() for value in maps):
        raise IntegrityError("the explanation graph gives non-finite maps; nothing was written")
    fd = gradient_check if gradient_check is not None else finite_differences(classifier)
    return {
        "inputs": f"{len(images)} random images (seed {seed})",
        "logits_max_rel_diff": logits,
        "logits_tolerance": tolerance,
        "finite_differences": fd,
    }


def _half(cls: Classifier) -> bool:
    """Whether the network computes in half precision anywhere."""
    return any(info.dtype == TensorProto.FLOAT16 for info in cls.infos.values())


def finite_differences(classifier: onnx.ModelProto, seed: int = 0) -> dict[str, Any]:
    """The backward pass the transformation writes for `classifier` (its `gradient` graph)
    against central finite differences of the classifier (see the module doc).

    Raises:
        IntegrityError: an fp32 graph's error exceeds `FD_TOLERANCE`.
    """
    cls = Classifier(classifier)
    network = cls.network()
    info = cls.infos[cls.explained]
    half = _half(cls)
    x = _images(info.sizes, info.dtype, _SAMPLES, seed + 1)
    net = session(network)
    gradient = build_explanation(network, "gradient")
    targets = np.full((len(x), 1), -1, dtype=np.int64)
    grad, used = session(gradient).run(
        ["attribution", "target_used"], {cls.explained: x, "target": targets}
    )
    rng = np.random.default_rng(seed + 2)
    rows = np.arange(len(x))
    steps = [scale * float(np.sqrt(np.prod(info.sizes))) for scale in _STEPS]
    magnitude = np.sqrt((grad.astype(np.float64) ** 2).reshape(len(x), -1).sum(axis=1))
    errors = []
    for k in range(3):
        d = grad.astype(np.float64) if k == 0 else rng.standard_normal(x.shape)
        norms = np.sqrt((d.reshape(len(x), -1) ** 2).sum(axis=1)).reshape(-1, 1, 1, 1)
        d = d / np.maximum(norms, 1e-30)
        analytic = (grad.astype(np.float64) * d).reshape(len(x), -1).sum(axis=1)
        best = np.full(len(x), np.inf)
        for step in steps:  # the better of two steps: kinks hurt the larger, rounding the smaller
            plus = net.run(None, {cls.explained: (x + step * d).astype(x.dtype)})[0]
            minus = net.run(None, {cls.explained: (x - step * d).astype(x.dtype)})[0]
            fd = (plus[rows, used[:, 0]].astype(np.float64) - minus[rows, used[:, 0]]) / (2 * step)
            best = np.minimum(best, np.abs(fd - analytic) / np.maximum(magnitude, 1e-30))
        errors.append(best)
    worst = float(np.max(errors))
    result = {
        "directions": "the gradient and 2 random unit directions",
        "images": len(x),
        "steps": steps,
        "max_rel_error": worst,
        "tolerance": None if half else FD_TOLERANCE,
    }
    if not half and not worst <= FD_TOLERANCE:
        raise IntegrityError(
            f"the gradient graph disagrees with finite differences of the classifier by {worst:.3g}"
            f" (relative to |gradient|, > {FD_TOLERANCE}); nothing was written"
        )
    return result
