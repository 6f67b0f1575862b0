"""Standard KServe v2 clients work unchanged: tritonclient.grpc against our server, one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.serving.helpers import DIGITS, MODEL, ROOT

HERE = Path(__file__).resolve().parent


def test_tritonclient_metadata_config_and_exact_inference(server, onnx_reference):
    x = np.random.default_rng(11).standard_normal((4, 1, 32, 32)).astype(np.float32)
    client = triton.InferenceServerClient(server.target)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)

    server_metadata = client.get_server_metadata(as_json=True)
    assert server_metadata["name"] == "cnnzoo"
    assert "classification" in server_metadata["extensions"]
    metadata = client.get_model_metadata(MODEL, as_json=True)
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "1", "32", "32"]}
    ]
    config = client.get_model_config(MODEL, as_json=True)["config"]
    assert config["name"] == MODEL and config["max_batch_size"] == 64
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert config["parameters"]["zoo_entry"]["string_value"] == MODEL

    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("logits")])
    logits = result.as_numpy("logits")
    expected = onnx_reference.run(["logits"], {"input": x})[0]
    assert logits.dtype == np.float32 and logits.shape == (4, 10)
    np.testing.assert_array_equal(logits, expected)

    top = client.infer(
        MODEL, [tensor], outputs=[triton.InferRequestedOutput("logits", class_count=3)]
    )
    for row, items in enumerate(top.as_numpy("logits").tolist()):
        indices = [int(item.decode().split(":")[1]) for item in items]
        assert indices == list(np.argsort(-expected[row], kind="stable")[:3])

    (stats,) = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    assert stats["name"] == MODEL and int(stats["inference_count"]) >= 8
    with pytest.raises(InferenceServerException) as info:
        client.infer("../../etc", [tensor])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    client.close()


@pytest.mark.parametrize("order", ["tritonclient-first", "cnnzoo-first"])
def test_tritonclient_and_cnnzoo_share_a_process_in_either_import_order(server, repository, order):
    result = subprocess.run(
        [sys.executable, str(HERE / "shared_process_check.py"), order, server.target, MODEL,
         str(repository), str(DIGITS[0])],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {
        "logits_shape": [1, 10],
        "config_name": MODEL,
        "config_max_batch_size": 64,
        "classify_label": DIGITS[0].parent.name,
    }
