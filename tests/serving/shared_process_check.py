"""tritonclient and cnnzoo in one process, imported in the order given (run as a script).

Usage: python shared_process_check.py ORDER HOST:PORT MODEL REPOSITORY, where ORDER is
`tritonclient-first` or `cnnzoo-first`. Prints JSON: tritonclient's logits, cnnzoo's Classify
answer and the model's config as cnnzoo's repository reader parses it.
"""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np


def main(order: str, url: str, model: str, repository: str) -> None:
    modules = ["tritonclient.grpc", "cnnzoo.serving.client", "cnnzoo.zoo.repository"]
    if order == "cnnzoo-first":
        modules = modules[1:] + modules[:1]
    loaded = {name: importlib.import_module(name) for name in modules}
    triton = loaded["tritonclient.grpc"]

    x = np.zeros((1, 1, 32, 32), dtype=np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    client = triton.InferenceServerClient(url)
    logits = client.infer(model, [tensor]).as_numpy("logits")

    config = loaded["cnnzoo.zoo.repository"].ModelRepository(repository).config(model)
    with open(sys.argv[5], "rb") as handle:
        digit = handle.read()
    with loaded["cnnzoo.serving.client"].ZooClient(url) as zoo:
        (predictions,) = zoo.classify([digit], model, top_k=1)
    json.dump(
        {
            "logits_shape": list(logits.shape),
            "config_name": config.name,
            "config_max_batch_size": config.max_batch_size,
            "classify_label": predictions[0].label,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main(*sys.argv[1:5])
