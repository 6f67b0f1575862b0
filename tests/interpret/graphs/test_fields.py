"""Receptive fields read off the exported ONNX graphs (`cnnzoo.interpret.graphs.fields`, what the
torch-free server and the explorer use) agree with the PyTorch walk that `cnnzoo layers` prints
(`cnnzoo.interpret.receptive_field`), layer by layer, for the zoo's architectures."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from cnnzoo import zoo
from cnnzoo.interpret.graphs.classifier import Classifier
from cnnzoo.interpret.graphs.fields import field_json, receptive_fields
from cnnzoo.interpret.graphs.layers import layer_table
from cnnzoo.interpret.layers import describe_layers
from cnnzoo.zoo.export import ExportOptions, export_model


@pytest.mark.parametrize("name", ["lenet5-mnist", "resnet20-cifar10", "alexnet-cifar10"])
def test_graph_fields_match_the_pytorch_walk(name: str, tmp_path: Path) -> None:
    summary = export_model(ExportOptions(model=name, repository=tmp_path))
    cls = Classifier(onnx.load(str(Path(summary["path"]) / "model.onnx")))
    fields = receptive_fields(cls)
    entry = zoo.get_entry(name)
    model = zoo.build_model(name)
    expected = {
        info.name: info.receptive_field
        for info in describe_layers(
            model, (entry.preprocess.channels, *entry.preprocess.input_size)
        )
    }
    compared = 0
    for layer in layer_table(cls).layers:
        if not layer.spatial or layer.name not in expected:
            continue
        rf = expected[layer.name]
        got = field_json(fields.get(layer.tensor))
        if rf is None:
            assert got is None, layer.name
            continue
        want = {"size": list(rf.size), "stride": list(rf.stride), "offset": list(rf.offset)}
        assert got == want, layer.name
        compared += 1
    assert compared >= 5
