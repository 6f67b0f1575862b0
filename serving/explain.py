"""The Explain RPC's one contact with `interpret`: image bytes + served model in, map out.

The ONNX session cannot give gradients, so the version's PyTorch model is rebuilt from its
`model.safetensors` (once, lazily) and handed to `cnnzoo.interpret.explain.explain`.
"""

from __future__ import annotations

from cnnzoo.errors import InvalidInput, quoted
from cnnzoo.interpret.methods import METHODS
from cnnzoo.serving.images import images_to_batch
from cnnzoo.serving.limits import check_deadline
from cnnzoo.serving.types import ExplainResult
from cnnzoo.serving.version import LoadedVersion

__all__ = ["explain_image"]


def explain_image(
    served: LoadedVersion,
    image: bytes,
    method: str,
    target: int | None,
    *,
    max_pixels: int | None = None,
    deadline: float | None = None,
) -> ExplainResult:
    """Explain one encoded image with `method` for class `target` (None: the predicted class).

    `max_pixels` bounds the decoded image; `deadline` (`time.monotonic()` seconds) is checked
    before each step (decoding, loading the weights, the explanation itself), so work whose
    caller has given up is not started.

    Raises:
        InvalidInput: unknown method, target outside the model's classes, or a bad image.
        ResourceExhausted: the image has more than `max_pixels` pixels.
        DeadlineExceeded: the deadline passed before the explanation started.
    """
    if method not in METHODS:
        raise InvalidInput(f"unknown method {quoted(method)}; methods: {', '.join(METHODS)}")
    preprocess = served.image_preprocess("Explain")
    classes = served.spec.output.dims[-1] if served.spec.output.dims else 0
    if target is not None and not 0 <= target < classes:
        raise InvalidInput(
            f"target {target} is not a class of {served.name!r} (0 to {classes - 1})"
        )
    check_deadline(deadline, "before the image was decoded")
    batch = images_to_batch([image], preprocess, max_pixels=max_pixels, deadline=deadline)
    # torch is loaded on the first explanation, after the request was found sound
    import torch

    from cnnzoo.interpret.explain import explain

    model = served.torch_model()
    check_deadline(deadline, "before the explanation started")
    explanation = explain(model, torch.from_numpy(batch), method, target)
    return ExplainResult(
        model=served.name,
        version=served.version_str,
        method=explanation.method,
        target=int(explanation.target),
        label=served.label(int(explanation.target)),
        score=float(explanation.score),
        png=explanation.png,
        attribution=explanation.attribution,
        warnings=explanation.warnings,
    )
