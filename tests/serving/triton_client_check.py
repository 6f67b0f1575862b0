"""Drive a server with NVIDIA's tritonclient (run as a script, in its own process).

tritonclient's generated `inference` protobuf module registers the same message names as
ours, so it cannot share a process with `protos.inference_pb2`. The test runs this script and
compares what it prints (JSON) with in-process ONNX Runtime.

Usage: python triton_client_check.py HOST:PORT MODEL INPUT.npy
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def main(url: str, model: str, input_path: str) -> None:
    x = np.load(input_path)
    client = triton.InferenceServerClient(url)
    report: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata(model, as_json=True),
        "model_config": client.get_model_config(model, as_json=True),
    }

    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], outputs=[triton.InferRequestedOutput("logits")])
    logits = result.as_numpy("logits")
    report["logits"] = {"dtype": str(logits.dtype), "shape": list(logits.shape),
                        "hex": logits.astype("<f4").tobytes().hex()}  # fmt: skip
    top = client.infer(
        model, [tensor], outputs=[triton.InferRequestedOutput("logits", class_count=3)]
    )
    report["classification"] = [
        [item.decode() for item in row] for row in top.as_numpy("logits").tolist()
    ]
    report["statistics"] = client.get_inference_statistics(model, as_json=True)
    try:
        client.infer("../../etc", [tensor])
        report["bad_model"] = "answered"
    except InferenceServerException as err:
        report["bad_model"] = err.status()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:4])
