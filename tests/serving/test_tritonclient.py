"""Standard KServe v2 clients work unchanged: tritonclient.grpc against our server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.serving.helpers import MODEL, ROOT

HERE = Path(__file__).resolve().parent


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HERE / name), *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def test_tritonclient_metadata_config_and_exact_inference(server, onnx_reference, tmp_path):
    x = np.random.default_rng(11).standard_normal((4, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_script("triton_client_check.py", server.target, MODEL, str(tmp_path / "x.npy"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["server_metadata"]["name"] == "cnnzoo"
    assert "classification" in report["server_metadata"]["extensions"]
    metadata = report["model_metadata"]
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "1", "32", "32"]}
    ]
    config = report["model_config"]["config"]
    assert config["name"] == MODEL and config["max_batch_size"] == 64
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert config["parameters"]["zoo_entry"]["string_value"] == MODEL

    expected = onnx_reference.run(["logits"], {"input": x})[0]
    logits = report["logits"]
    assert logits["dtype"] == "float32" and logits["shape"] == [4, 10]
    got = np.frombuffer(bytes.fromhex(logits["hex"]), dtype="<f4").reshape(4, 10)
    np.testing.assert_array_equal(got, expected)

    for row, items in enumerate(report["classification"]):
        indices = [int(item.split(":")[1]) for item in items]
        assert indices == list(np.argsort(-expected[row], kind="stable")[:3])

    (stats,) = report["statistics"]["model_stats"]
    assert stats["name"] == MODEL and int(stats["inference_count"]) >= 8
    assert report["bad_model"] == "StatusCode.NOT_FOUND"


def test_our_inference_proto_is_triton_field_for_field():
    """Every message, field name, number, type and RPC equals tritonclient's grpc_service.proto."""
    ours = run_script("describe_protocol.py", "ours")
    theirs = run_script("describe_protocol.py", "triton")
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    ours_json, theirs_json = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert ours_json["package"] == theirs_json["package"] == "inference"
    assert ours_json["rpcs"] == theirs_json["rpcs"]
    assert ours_json["messages"] == theirs_json["messages"]
