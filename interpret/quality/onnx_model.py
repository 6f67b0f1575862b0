"""A classifier's forward pass on ONNX Runtime, as the metrics' *model* callable.

The faithfulness metrics spend most of their time in model calls (a deletion or insertion curve
is `steps + 1` batches of perturbed images per filling): on a CPU, ONNX Runtime runs them about
twice as fast as PyTorch's eager mode (resnet20-cifar10, batches of 256: about 2,300 against
1,200 images/s on two cores), with the same logits to float32 rounding.
`cnnzoo.interpret.torch_backend.onnx_model_callable` makes one from a PyTorch model; a model
repository's `model.onnx` serves just as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnzoo.errors import UnsupportedModel

__all__ = ["OnnxModel"]


class OnnxModel:
    """images `[N, C, H, W]` float32 -> logits `[N, K]` float32, on ONNX Runtime's CPU provider.

    Args:
        model: the ONNX graph (its bytes, or a path to it) with one float32 image input.
        threads: threads per operator (0: one per core).

    Raises:
        UnsupportedModel: the graph does not take one float32 image batch.
    """

    runtime = "onnxruntime"

    def __init__(self, model: bytes | str | Path, *, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)":
            found = ", ".join(f"{i.name} {i.type}" for i in inputs)
            raise UnsupportedModel(f"the graph must take one float32 image batch, not {found}")
        self._input = inputs[0].name
        self._output = self._session.get_outputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(images, dtype=np.float32)
        (logits,) = self._session.run([self._output], {self._input: feed})
        return np.asarray(logits, dtype=np.float32)
