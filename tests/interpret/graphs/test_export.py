"""Explanation models in a model repository: `cnnzoo explain-export` on a repository laid out for
Triton by other means (model.onnx and a plain config.pbtxt, no cnnzoo files), `cnnzoo export`
writing them beside the classifier, and a changed classifier detected."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from torch import nn

from cnnzoo.cli import main
from cnnzoo.errors import IntegrityError
from cnnzoo.interpret.graphs import GRAPH_METHODS, check_classifier, explanation_facts
from cnnzoo.protos import model_config_pb2
from cnnzoo.zoo.repository import ModelRepository
from tests.interpret.graphs.helpers import feeds_for, ort_session, to_onnx

TRITON_CONFIG = """
name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, 12, 12 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def tiny(activation: nn.Module | None = None, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), activation or nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 4),
    )  # fmt: skip
    return to_onnx(model, torch.randn(2, 3, 12, 12))


def triton_repository(root: Path, classifier: onnx.ModelProto) -> Path:
    """A repository as Triton users write it: no manifest, no labels, no cnnzoo parameters."""
    (root / "tiny" / "1").mkdir(parents=True)
    (root / "tiny" / "config.pbtxt").write_text(TRITON_CONFIG)
    onnx.save(classifier, str(root / "tiny" / "1" / "model.onnx"))
    return root


def test_explain_export_on_a_triton_repository(tmp_path: Path, capsys) -> None:
    root = triton_repository(tmp_path, tiny())
    digest = hashlib.sha256((root / "tiny" / "1" / "model.onnx").read_bytes()).hexdigest()
    assert main(["explain-export", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(GRAPH_METHODS) and all("self-check" in line for line in lines)
    repo = ModelRepository(root)
    assert repo.models() == sorted(["tiny", *(f"tiny.{m}" for m in GRAPH_METHODS)])
    for method in GRAPH_METHODS:
        name = f"tiny.{method}"
        manifest = repo.verify(name, 1)  # every file's sha256
        assert sorted(manifest.files) == ["1/model.onnx", "config.pbtxt", "labels.txt"]
        assert (manifest.explains, manifest.method, manifest.classifier_sha256) == (
            "tiny", method, digest)  # fmt: skip
        assert manifest.self_check["logits_max_rel_diff"] <= 1e-5
        assert manifest.self_check["finite_differences"]["max_rel_error"] <= 1e-2
        config = repo.config(name)
        assert (config.name, config.platform) == (name, "onnxruntime_onnx")
        assert config.HasField("dynamic_batching")
        copies = {"integrated-gradients": 50, "occlusion": 49}.get(method, 1)
        assert config.max_batch_size == max(1, 16 // copies)
        inputs = {i.name: (i.data_type, list(i.dims)) for i in config.input}
        outputs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
        fp32, int64 = model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_INT64
        assert inputs["x"] == (fp32, [3, 12, 12])
        assert outputs["logits"] == (fp32, [4])
        if method == "activations":  # no explanation: each layer's output, named by the layer
            facts = explanation_facts(onnx.load(str(root / name / "1" / "model.onnx")))
            layers = {e["output"]: (fp32, e["shape"]) for e in json.loads(facts["activations"])}
            assert set(inputs) == {"x"} and outputs == {"logits": (fp32, [4]), **layers}
            continue
        width = 1 if method in ("grad-cam", "occlusion") else 3
        assert outputs["attribution"] == (fp32, [width, 12, 12])
        if method.endswith("-unit"):
            assert set(inputs) == {"x", "layer", "channel", "position"}
            assert inputs["position"] == (int64, [2])
            assert set(outputs) == {"attribution", "logits", "unit_position", "unit_activation"}
        else:
            assert inputs["target"] == (int64, [1])
            assert set(outputs) == {"attribution", "logits", "target_used"}
        parameters = {k: v.string_value for k, v in config.parameters.items()}
        assert parameters["cnnzoo_explanation"] == method and parameters["explains"] == "tiny"
        assert "classifier_sha256" not in parameters  # per version: in model.onnx and manifest
        graph = onnx.load(str(root / name / "1" / "model.onnx"))
        facts = explanation_facts(graph)
        assert facts["classifier_sha256"] == digest
        check_classifier(graph, digest)
        x = np.random.default_rng(0).standard_normal((3, 3, 12, 12)).astype(np.float32)
        found = ort_session(graph).run(["attribution"], feeds_for(graph, x, target=2))[0]
        assert found.shape == (3, width, 12, 12) and np.isfinite(found).all()


def test_explain_export_twice_and_after_the_classifier_changed(tmp_path: Path, capsys) -> None:
    root = triton_repository(tmp_path, tiny())
    assert main(["explain-export", str(root), "tiny", "--methods", "gradient,occlusion"]) == 0
    written = root / "tiny.gradient" / "1" / "model.onnx"
    before = written.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["explain-export", str(root), "--methods", "gradient", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["status"] == "up to date" and written.stat().st_mtime_ns == before
    # the classifier's version is replaced in place (no manifest guards a Triton repository)
    onnx.save(tiny(seed=1), str(root / "tiny" / "1" / "model.onnx"))
    changed = (root / "tiny" / "1" / "model.onnx").read_bytes()
    with pytest.raises(IntegrityError, match="gradient explanation model was built from tiny"):
        check_classifier(onnx.load(str(written)), changed)
    assert main(["explain-export", str(root), "--methods", "gradient"]) == 5
    assert "exists but was built from another tiny" in capsys.readouterr().err


def test_refused_methods_write_nothing(tmp_path: Path, capsys) -> None:
    root = triton_repository(tmp_path, tiny(nn.Sigmoid()))
    assert main(["explain-export", str(root)]) == 0  # every method: the refusals are reported
    out = capsys.readouterr().out
    assert "tiny.deconvnet: refused: node " in out and "(Sigmoid)" in out
    assert not (root / "tiny.deconvnet").exists() and (root / "tiny.gradient" / "1").is_dir()
    # a method asked for by name that cannot apply is an error
    code = main(["explain-export", str(root), "--methods", "guided-backprop"])
    assert code == 2 and "defined for ReLU only" in capsys.readouterr().err
    assert not (root / "tiny.guided-backprop").exists()
    assert not any(p.name.startswith(".tmp") for p in root.rglob("*"))


def test_bad_requests(tmp_path: Path, capsys) -> None:
    root = triton_repository(tmp_path, tiny())
    with pytest.raises(SystemExit):
        main(["explain-export", str(root), "--methods", "gradient,lime"])
    assert "unknown explanation method 'lime'" in capsys.readouterr().err
    assert main(["explain-export", str(root), "nothere"]) == 3
    assert main(["explain-export", str(tmp_path / "none")]) == 3


def test_cnnzoo_export_writes_explanations_with_pytorch_parity(tmp_path: Path, data_dir) -> None:
    root = tmp_path / "repository"
    assert main(["export", "lenet5-mnist", "--repository", str(root)]) == 0
    repo = ModelRepository(root)
    assert repo.models() == sorted(["lenet5-mnist", *(f"lenet5-mnist.{m}" for m in GRAPH_METHODS)])
    for method in GRAPH_METHODS:
        manifest = repo.verify(f"lenet5-mnist.{method}", 1)
        parity = manifest.parity
        assert parity["inputs"] == "dataset" and parity["n"] == 4
        within = parity.get("maps_within_tolerance", parity.get("layers_within_tolerance"))
        assert within == parity.get("layers", 4), (method, parity)
        assert repo.labels(f"lenet5-mnist.{method}") == repo.labels("lenet5-mnist")
        config = repo.config(f"lenet5-mnist.{method}")
        assert config.output[[o.name for o in config.output].index("logits")].label_filename
        assert repo.parameters(f"lenet5-mnist.{method}")["mean"] == "0.1307"  # preprocessing
    none = tmp_path / "classifier-only"
    args = ["export", "lenet5-mnist", "--repository", str(none), "--explanations", "none"]
    assert main(args) == 0
    assert ModelRepository(none).models() == ["lenet5-mnist"]


def test_the_graphs_package_runs_without_torch(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny(), str(path))
    code = f"""
import sys, numpy as np, onnx
from cnnzoo.interpret.graphs import build_explanation, attribution_png, GRAPH_METHODS
from cnnzoo.interpret.graphs.selfcheck import session
classifier = onnx.load({str(path)!r})
graph = build_explanation(classifier, "guided-grad-cam")
x = np.zeros((1, 3, 12, 12), np.float32)
out = session(graph).run(["attribution"], {{"x": x, "target": [[1]], "layer": [[-1]]}})[0]
assert attribution_png(out[0])[:4] == b"\\x89PNG"
assert not {{"torch", "torchvision", "captum"}} & set(sys.modules), sys.modules.keys()
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert text_format  # protobuf text format is how config.pbtxt is read above
