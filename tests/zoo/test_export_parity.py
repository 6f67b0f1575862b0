"""Export parity beyond LeNet-5: every 32x32 entry, fp16, and exports the parity check rejects.

Random-init weights are enough to test the graph: parity compares ONNX Runtime with PyTorch on
the same weights. The rejected exports use real weights that genuinely break parity (no patching
of the exporter): logits so large that float32 rounding differs by more than the tolerance, and
weights beyond the fp16 range.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cnnzoo import zoo
from cnnzoo.errors import IntegrityError
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.checkpoints import save_weights
from cnnzoo.zoo.export import FP32_TOLERANCE, ExportOptions, export_model

SMALL_ENTRIES = [n for n in zoo.list_models() if zoo.get_entry(n).input_shape[1:] == (32, 32)]
# AlexNet's export takes a few seconds on one thread
_SLOW = {"alexnet-cifar10"}


def _random_weights(name, path, scale=1.0):
    """A seeded random-init state dict of `name` (weights and biases times `scale`) in `path`."""
    torch.manual_seed(0)
    model = zoo.build_model(name)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    save_weights(model, path, {"zoo_entry": name})
    return model


def _tree(root):
    return {
        str(p.relative_to(root)): (sha256_file(p) if p.is_file() else None) for p in root.rglob("*")
    }


def test_the_32x32_entries_are_the_small_ones():
    assert {"lenet5-mnist", "alexnet-cifar10", "resnet20-cifar10"} <= set(SMALL_ENTRIES)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in SMALL_ENTRIES]
)
def test_random_init_export_matches_pytorch(name, tmp_path, data_dir):
    weights = tmp_path / "random.safetensors"
    model = _random_weights(name, weights)
    summary = export_model(ExportOptions(name, tmp_path / "repo", weights=weights))
    parity = summary["parity"]
    assert parity["inputs"] == "dataset" and parity["n"] == 64
    assert parity["max_abs_diff"] <= FP32_TOLERANCE == 1e-4
    assert parity["single_image_max_abs_diff"] <= 1e-4
    # independently of the exporter's check: other inputs, another batch size
    entry = zoo.get_entry(name)
    batch = torch.randn(5, *entry.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(batch).numpy()
    session = ort.InferenceSession(
        str(tmp_path / "repo" / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    got = session.run(["logits"], {"input": batch.numpy()})[0]
    assert got.shape == (5, entry.num_classes)
    assert np.max(np.abs(got - expected)) <= 1e-4


def test_fp16_export_of_a_resnet(tmp_path):
    weights = tmp_path / "random.safetensors"
    _random_weights("resnet20-cifar10", weights)
    summary = export_model(
        ExportOptions("resnet20-cifar10", tmp_path / "repo", weights=weights, fp16=True)
    )
    parity = summary["parity"]
    assert summary["precision"] == "fp16" and parity["tolerance"] is None
    assert parity["top1_decisive_disagreements"] == 0 and parity["top1_agreement"] >= 0.9
    assert 0 < parity["max_abs_diff"] < 0.1  # really half precision, and close
    graph = onnx.load(str(tmp_path / "repo" / "resnet20-cifar10" / "1" / "model.onnx")).graph
    floats = {i.data_type for i in graph.initializer if i.data_type != onnx.TensorProto.INT64}
    assert floats == {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_parity_failure_discards_the_export(tmp_path):
    """Logits around 1e7: ONNX Runtime's and PyTorch's float32 rounding differ by far more
    than the absolute tolerance, so the export is refused and nothing stays on disk."""
    weights = tmp_path / "huge.safetensors"
    _random_weights("lenet5-mnist", weights, scale=30.0)
    repository = tmp_path / "repo"
    repository.mkdir()
    with pytest.raises(IntegrityError, match=r"differs from PyTorch by .* \(> 0.0001\)"):
        export_model(ExportOptions("lenet5-mnist", repository, weights=weights))
    assert list(repository.iterdir()) == []


def test_fp16_overflow_is_refused_and_the_repository_is_unchanged(exported_lenet, tmp_path):
    """Weights beyond the fp16 range become inf in the half graph: its NaN logits must not
    pass the parity check (NaN compares false with every bound)."""
    repository, _ = exported_lenet
    weights = tmp_path / "beyond-fp16.safetensors"
    _random_weights("lenet5-mnist", weights, scale=1e6)
    before = _tree(repository)
    with pytest.raises(IntegrityError, match="inf/NaN logits"):
        export_model(ExportOptions("lenet5-mnist", repository, weights=weights, fp16=True))
    assert _tree(repository) == before
