"""The faithfulness metrics' model calls on ONNX Runtime: the same figures as on PyTorch.

`onnx_model_callable` exports the PyTorch model once (torch.onnx) and checks its logits against
PyTorch's; `OnnxModel` runs a repository's model.onnx. Deletion and insertion curves, their
areas and Average Drop computed through either equal those computed through PyTorch (float32
rounding apart), and `cnnzoo explain --quality` with a repository says where the model ran.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo import zoo
from cnnzoo.cli import main
from cnnzoo.errors import UnsupportedModel
from cnnzoo.interpret.quality.onnx_model import OnnxModel
from cnnzoo.interpret.quality.report import evaluate
from cnnzoo.interpret.quality.settings import QualitySettings
from cnnzoo.interpret.torch_backend import method_maps, model_callable, onnx_model_callable

ROOT = Path(__file__).resolve().parents[2]
DIGITS = sorted((ROOT / "examples" / "digits").glob("*/*.png"))[:12]


@pytest.fixture(scope="module")
def lenet() -> tuple[torch.nn.Module, np.ndarray]:
    model = zoo.build_model("lenet5-mnist", weights="default").eval()
    preprocess = zoo.get_entry("lenet5-mnist").preprocess
    x = np.stack([preprocess.apply(Image.open(path)) for path in DIGITS]).astype(np.float32)
    return model, x


def test_the_exported_model_gives_pytorchs_logits(lenet) -> None:
    model, x = lenet
    forward = onnx_model_callable(model, x)
    assert forward is not None and forward.runtime == "onnxruntime"
    expected = model_callable(model)(x)
    np.testing.assert_allclose(forward(x), expected, rtol=1e-5, atol=1e-5)
    assert model.training is False  # the export left the model as it found it


def test_faithfulness_figures_equal_on_either_runtime(lenet) -> None:
    model, x = lenet
    targets = model_callable(model)(x).argmax(axis=1)
    maps = method_maps(model, ["gradient", "grad-cam"], x, targets)
    settings = QualitySettings(steps=8, batch_size=64)
    on_torch = evaluate(model_callable(model), x, targets, maps, settings, baselines=())
    on_onnx = evaluate(onnx_model_callable(model, x), x, targets, maps, settings, baselines=())
    for method in maps:
        a, b = on_torch[method], on_onnx[method]
        for filling in ("mean", "road"):
            for curve in ("deletion", "insertion"):
                np.testing.assert_allclose(
                    getattr(b.curves[filling], curve).probability,
                    getattr(a.curves[filling], curve).probability,
                    atol=1e-5,
                )
        np.testing.assert_allclose(b.confidence.drop, a.confidence.drop, atol=1e-3)


def test_models_the_export_cannot_serve_stay_on_pytorch(lenet) -> None:
    model, x = lenet
    double = zoo.build_model("lenet5-mnist", weights="default").double()
    assert onnx_model_callable(double, x) is None


def test_a_graph_that_takes_pixels_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    pixels = helper.make_tensor_value_info("x", TensorProto.UINT8, [None, 1, 4, 4])
    out = helper.make_tensor_value_info("y", TensorProto.UINT8, [None, 1, 4, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [pixels], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    save(model, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModel, match="one float32 image batch"):
        OnnxModel(tmp_path / "m.onnx")


def test_explain_quality_with_a_repository_runs_the_model_on_its_graph(tmp_path, capsys) -> None:
    repository = tmp_path / "repository"
    assert main(["export", "lenet5-mnist", "--repository", str(repository),
                 "--explanations", "gradient"]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "map.png"
    args = ["explain", str(DIGITS[0]), "--model", "lenet5-mnist", "--repository", str(repository)]
    assert main([*args, "--method", "gradient", "--out", str(out), "--quality"]) == 0
    printed = capsys.readouterr().out
    assert "model calls on ONNX Runtime, the repository's model.onnx" in printed
