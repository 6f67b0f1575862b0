"""How far one Explain map can be trusted, measured on request (`ExplainRequest.quality`).

The figures are `cnnzoo.interpret.quality`'s (torch-free, on numpy callables): the deletion and
insertion curves' areas with the mean filling (the explained class's probability as the map's
pixels are removed from, or added to, an image of the input's mean, in 16 steps), and for the
CAM family Average Drop and Increase in Confidence (Chattopadhay et al. 2018). Every model call
they make goes through the classifier's own dynamic batcher, with the Explain call's deadline:
about 34 rows per request, in batches the model takes, computed on a worker thread so the event
loop keeps answering.
"""

from __future__ import annotations

import asyncio

import numpy as np

from cnnzoo.errors import InvalidInput
from cnnzoo.serving.types import ExplainResult
from cnnzoo.serving.version import LoadedVersion

__all__ = ["QUALITY_STEPS", "check_quality", "explanation_quality"]

QUALITY_STEPS = 16
_CAM_METHODS = ("grad-cam", "guided-grad-cam")


def check_quality(served: LoadedVersion) -> None:
    """Refuse quality figures the model cannot give meaningfully.

    Raises:
        InvalidInput: the model takes uint8 pixels (the mean filling is a model input of 0) or
            has no batch dimension.
    """
    if served.spec.input.datatype != "FP32" or not served.spec.batched:
        raise InvalidInput(
            f"quality figures need a model that takes a batch of preprocessed FP32 images; "
            f"{served.name!r} takes {served.spec.input.datatype}"
            + ("" if served.spec.batched else " without a batch dimension")
        )


async def explanation_quality(
    served: LoadedVersion, batch: np.ndarray, result: ExplainResult, deadline: float | None
) -> dict[str, float]:
    """The quality figures of `result`'s map of the one image in `batch`."""
    loop = asyncio.get_running_loop()

    def model(images: np.ndarray) -> np.ndarray:  # called on the worker thread
        submitted = served.batcher.submit(np.ascontiguousarray(images, np.float32), deadline)
        return asyncio.run_coroutine_threadsafe(submitted, loop).result()

    return await asyncio.to_thread(_figures, model, served, batch, result)


def _figures(
    model: object, served: LoadedVersion, batch: np.ndarray, result: ExplainResult
) -> dict[str, float]:
    from cnnzoo.interpret.quality.confidence import confidence_change
    from cnnzoo.interpret.quality.curves import perturbation_curves
    from cnnzoo.interpret.quality.settings import QualitySettings

    size = max(1, min(64, served.spec.max_batch_size))
    settings = QualitySettings(steps=QUALITY_STEPS, fillings=("mean",), batch_size=size)
    targets = np.array([result.target], dtype=np.int64)
    maps = result.attribution[None].astype(np.float64)
    curves = perturbation_curves(model, batch, targets, {"map": maps}, settings, "mean")["map"]  # type: ignore[arg-type]
    figures = {
        "deletion_auc": float(curves.deletion.area()[0]),
        "insertion_auc": float(curves.insertion.area()[0]),
    }
    if result.method in _CAM_METHODS:
        change = confidence_change(
            model,  # type: ignore[arg-type]
            batch,
            targets,
            maps,
            np.array([result.score]),
            size,
        )
        figures["average_drop"] = float(change.drop[0])
        figures["increase_in_confidence"] = float(change.increase[0])
    return figures
