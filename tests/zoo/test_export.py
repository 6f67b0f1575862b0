import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format

from cnnzoo import zoo
from cnnzoo.cli import main
from cnnzoo.errors import AlreadyExists, IntegrityError, InvalidInput, NotFound
from cnnzoo.fileio import sha256_file
from cnnzoo.protos import model_config_pb2
from cnnzoo.zoo.datasets import get_dataset
from cnnzoo.zoo.export import ExportOptions, export_model, models_to_export
from cnnzoo.zoo.repository import Manifest, ModelRepository, VersionWriter


def _tree(root):
    return {
        str(p.relative_to(root)): (sha256_file(p) if p.is_file() else None) for p in root.rglob("*")
    }


def test_repository_layout_and_manifest(exported_lenet, trained_lenet):
    repository, summary = exported_lenet
    _, run = trained_lenet
    model_dir = repository / "lenet5-mnist"
    assert summary["version"] == 1
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == [
        "manifest.json", "model.onnx", "model.safetensors",
    ]  # fmt: skip
    manifest = json.loads((model_dir / "1" / "manifest.json").read_text())
    assert manifest["model"] == manifest["zoo_entry"] == "lenet5-mnist"
    assert manifest["version"] == 1 and manifest["precision"] == "fp32"
    for relative, digest in manifest["files"].items():
        assert sha256_file(model_dir / relative) == digest
    assert set(manifest["files"]) == {
        "config.pbtxt", "labels.txt", "1/model.onnx", "1/model.safetensors",
    }  # fmt: skip
    assert manifest["source_weights_sha256"] == sha256_file(run / "model.safetensors")
    assert (model_dir / "labels.txt").read_text().splitlines() == [str(d) for d in range(10)]


def test_config_pbtxt_round_trips_through_text_format(exported_lenet):
    repository, _ = exported_lenet
    text = (repository / "lenet5-mnist" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert text_format.MessageToString(config) == text
    assert config.name == "lenet5-mnist" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    assert config.HasField("dynamic_batching")
    (inp,) = config.input
    (out,) = config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == (
        "input",
        model_config_pb2.TYPE_FP32,
        [1, 32, 32],
    )
    assert (out.name, list(out.dims), out.label_filename) == ("logits", [10], "labels.txt")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["zoo_entry"] == "lenet5-mnist" and params["dataset"] == "mnist"
    assert params["mean"] == "0.1307" and params["std"] == "0.3081" and params["colour"] == "L"
    assert (
        ModelRepository(repository).preprocess("lenet5-mnist")
        == zoo.get_entry("lenet5-mnist").preprocess
    )


def test_onnx_file_is_self_describing_with_dynamic_batch(exported_lenet, trained_lenet):
    repository, _ = exported_lenet
    _, run = trained_lenet
    path = repository / "lenet5-mnist" / "1" / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 32, 32]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["labels"]) == [str(d) for d in range(10)]
    assert props["mean"] == "0.1307" and props["std"] == "0.3081"
    assert props["colour"] == "L" and props["input_size"] == "32,32"
    assert props["source_weights_sha256"] == sha256_file(run / "model.safetensors")
    assert not list(path.parent.glob("*.data"))  # weights inside the one file


def test_onnx_runtime_matches_pytorch_on_real_digits(exported_lenet, trained_lenet, data_dir):
    """Independent of the exporter's own check: another batch size and slice of the test set."""
    repository, summary = exported_lenet
    _, run = trained_lenet
    entry = zoo.get_entry("lenet5-mnist")
    data = get_dataset(
        "mnist", "test", data_dir=data_dir, transform=entry.preprocess.torch_transform()
    )
    batch = torch.stack([data[i][0] for i in range(100, 137)])
    model = zoo.build_model("lenet5-mnist", weights=run / "model.safetensors")
    with torch.inference_mode():
        expected = model(batch).numpy()
    session = ort.InferenceSession(
        str(repository / "lenet5-mnist" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    got = session.run(["logits"], {"input": batch.numpy()})[0]
    assert got.shape == (37, 10)
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert summary["parity"]["inputs"] == "dataset"
    assert summary["parity"]["max_abs_diff"] <= 1e-4
    # the safetensors beside the graph is the same torch model
    beside = zoo.build_model(
        "lenet5-mnist", weights=repository / "lenet5-mnist" / "1" / "model.safetensors"
    )
    ours, theirs = beside.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_repository_reader(exported_lenet):
    repository, _ = exported_lenet
    repo = ModelRepository(repository)
    assert "lenet5-mnist" in repo.models()
    assert repo.versions("lenet5-mnist")[0] == 1
    assert repo.labels("lenet5-mnist") == [str(d) for d in range(10)]
    assert repo.verify("lenet5-mnist", 1).version == 1
    for bad in ("../../etc", "..", "a/b", ".hidden", "nope"):
        with pytest.raises(NotFound):
            repo.versions(bad)
    with pytest.raises(NotFound):
        repo.version_dir("lenet5-mnist", 99)
    with pytest.raises(NotFound):
        repo.version_dir("lenet5-mnist", "1; rm")


def test_new_versions_increase_and_old_ones_are_never_overwritten(trained_lenet, tmp_path):
    _, run = trained_lenet
    weights = run / "model.safetensors"
    first = export_model(ExportOptions("lenet5-mnist", tmp_path, weights=weights))
    second = export_model(ExportOptions("lenet5-mnist", tmp_path, weights=weights, fp16=True))
    assert (first["version"], second["version"]) == (1, 2)
    assert second["precision"] == "fp16"
    assert second["parity"]["top1_decisive_disagreements"] == 0
    # fp16 keeps FP32 inputs and outputs, so the config is shared
    repo = ModelRepository(tmp_path)
    assert repo.versions("lenet5-mnist") == [1, 2]
    repo.verify("lenet5-mnist", 1)
    assert repo.verify("lenet5-mnist", 2).precision == "fp16"
    before = _tree(tmp_path)
    with pytest.raises(AlreadyExists, match="never overwritten"):
        export_model(ExportOptions("lenet5-mnist", tmp_path, weights=weights, version=1))
    with pytest.raises(AlreadyExists, match="max-batch-size"):
        export_model(ExportOptions("lenet5-mnist", tmp_path, weights=weights, max_batch_size=8))
    assert _tree(tmp_path) == before


def test_a_requested_version_must_be_above_the_latest(trained_lenet, tmp_path, capsys):
    """The server serves the latest version: a lower one would never be served."""
    _, run = trained_lenet
    weights = str(run / "model.safetensors")
    export_model(ExportOptions("lenet5-mnist", tmp_path, weights=weights))
    assert export_model(ExportOptions("lenet5-mnist", tmp_path, weights=weights, version=5))[
        "version"
    ] == 5  # fmt: skip
    before = _tree(tmp_path)
    with pytest.raises(InvalidInput, match="already has version 5; versions only increase"):
        export_model(ExportOptions("lenet5-mnist", tmp_path, weights=weights, version=3))
    with pytest.raises(AlreadyExists, match="omit --version to write 6"):
        export_model(ExportOptions("lenet5-mnist", tmp_path, weights=weights, version=5))
    code = main(["export", "lenet5-mnist", "--weights", weights, "--repository", str(tmp_path),
                 "--version", "3"])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [
        "cnnzoo export: error: --version 3: lenet5-mnist already has version 5; versions only "
        "increase and are never overwritten (omit --version to write 6)"
    ]
    assert _tree(tmp_path) == before
    assert ModelRepository(tmp_path).versions("lenet5-mnist") == [1, 5]


def test_verify_names_a_tampered_file(trained_lenet, tmp_path):
    _, run = trained_lenet
    export_model(ExportOptions("lenet5-mnist", tmp_path, weights=run / "model.safetensors"))
    labels = tmp_path / "lenet5-mnist" / "labels.txt"
    labels.write_text(labels.read_text().replace("7", "seven"))
    with pytest.raises(IntegrityError, match="labels.txt"):
        ModelRepository(tmp_path).verify("lenet5-mnist", 1)


def test_failed_check_leaves_nothing_behind(trained_lenet, tmp_path, monkeypatch):
    """The ONNX checker (third party) rejecting the graph: the half-built version disappears."""
    _, run = trained_lenet

    def reject(*args, **kwargs):
        raise onnx.checker.ValidationError("graph rejected")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    with pytest.raises(IntegrityError, match="graph rejected"):
        export_model(ExportOptions("lenet5-mnist", tmp_path, weights=run / "model.safetensors"))
    assert list(tmp_path.iterdir()) == []


def test_repository_that_is_a_file(tmp_path):
    target = tmp_path / "repo"
    target.write_text("not a folder")
    with pytest.raises(InvalidInput, match="is a file"):
        export_model(ExportOptions("lenet5-mnist", target))
    with pytest.raises(InvalidInput, match="is a file"):
        ModelRepository(target)
    assert target.read_text() == "not a folder"


def test_which_models_export_all_covers():
    trained = [n for n in zoo.list_models() if zoo.get_entry(n).weights_file]
    assert "lenet5-mnist" in trained
    assert models_to_export(True, None, include_untrained=False) == trained
    assert models_to_export(True, None, include_untrained=True) == zoo.list_models()
    with pytest.raises(NotFound):
        models_to_export(False, "nope", include_untrained=False)


def test_manifest_is_typed_and_a_malformed_one_is_refused(exported_lenet, tmp_path):
    repository, summary = exported_lenet
    manifest = ModelRepository(repository).verify("lenet5-mnist", 1)
    assert isinstance(manifest, Manifest)
    assert (manifest.model, manifest.version, manifest.zoo_entry) == (
        "lenet5-mnist",
        1,
        "lenet5-mnist",
    )
    assert manifest.trained and manifest.parity["max_abs_diff"] == summary["parity"]["max_abs_diff"]
    text = (repository / "lenet5-mnist" / "1" / "manifest.json").read_text()
    assert Manifest.from_json(text, "lenet5-mnist", 1).to_json() == text  # same bytes back
    for bad, problem in (
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"files": {}}', "lists no files"),
        ('{"files": {"1/model.onnx": 5}}', "sha256 strings"),
        ('{"files": {"a": "b"}, "version": "one"}', "version of the wrong type"),
    ):
        with pytest.raises(IntegrityError, match=problem):
            Manifest.from_json(bad, "m", 1)


def test_an_uncommitted_version_leaves_nothing_behind(tmp_path):
    """Leaving the writer without a commit (an error, an interrupt) removes all it created."""
    writer = VersionWriter(tmp_path / "repo", "m", config="c\n", labels="a\nb\n")
    with pytest.raises(KeyboardInterrupt), writer:
        (writer.folder / "model.onnx").write_bytes(b"half a graph")
        raise KeyboardInterrupt
    assert list((tmp_path / "repo").iterdir()) == []
    with VersionWriter(tmp_path / "repo", "m", config="c\n", labels="a\nb\n") as writer:
        (writer.folder / "model.onnx").write_bytes(b"graph")
        manifest = writer.commit(precision="fp32")
    assert manifest.files == {
        "config.pbtxt": sha256_file(tmp_path / "repo" / "m" / "config.pbtxt"),
        "labels.txt": sha256_file(tmp_path / "repo" / "m" / "labels.txt"),
        "1/model.onnx": sha256_file(tmp_path / "repo" / "m" / "1" / "model.onnx"),
    }
    assert ModelRepository(tmp_path / "repo").verify("m", 1) == manifest
    with pytest.raises(AlreadyExists, match="different contents"):
        VersionWriter(tmp_path / "repo", "m", config="other\n", labels="a\nb\n")


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"max_batch_size": 0}, "--max-batch-size must be between 1 and 4096"),
        ({"max_batch_size": 5000}, "--max-batch-size must be between 1 and 4096"),
        ({"version": 0}, "--version must be >= 1"),
        ({"version": 2, "skip_unchanged": True}, "--skip-unchanged"),
        ({"input_dtype": "int8"}, "--input-dtype must be one of fp32, uint8, got 'int8'"),
    ],
)
def test_export_options_are_checked_when_made(tmp_path, options, problem):
    with pytest.raises(InvalidInput, match=problem):
        ExportOptions("lenet5-mnist", tmp_path, **options)


def test_skip_unchanged_beside_a_version_without_manifest(exported_lenet, trained_lenet, tmp_path):
    """A latest version put there by other means (model.onnx only) is not up to date: a new
    version is written, and the others are left alone."""
    import shutil

    repository, _ = exported_lenet
    _, run = trained_lenet
    shutil.copytree(repository, tmp_path / "repo")
    plain = tmp_path / "repo" / "lenet5-mnist" / "2"
    plain.mkdir()
    shutil.copy(tmp_path / "repo" / "lenet5-mnist" / "1" / "model.onnx", plain / "model.onnx")
    with pytest.raises(NotFound, match="version 2 has no manifest.json"):
        ModelRepository(tmp_path / "repo").verify("lenet5-mnist", 2)
    summary = export_model(
        ExportOptions("lenet5-mnist", tmp_path / "repo", weights=run / "model.safetensors",
                      skip_unchanged=True)
    )  # fmt: skip
    assert (summary["version"], summary["skipped"]) == (3, False)
    assert sorted(p.name for p in plain.iterdir()) == ["model.onnx"]


def test_uint8_export_normalises_real_images_inside_the_graph(trained_lenet, tmp_path, data_dir):
    """`--input-dtype uint8`: the graph takes the pixels after resize/crop/pad and gives what
    PyTorch gives on the same real images through torchvision's preprocessing."""
    _, run = trained_lenet
    summary = export_model(
        ExportOptions(
            model="lenet5-mnist",
            repository=tmp_path,
            weights=run / "model.safetensors",
            input_dtype="uint8",
        )
    )
    assert summary["input_dtype"] == "uint8" and summary["parity"]["inputs"] == "dataset"
    assert summary["parity"]["max_abs_diff"] <= 1e-4
    model_dir = tmp_path / "lenet5-mnist"
    config = text_format.Parse(
        (model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert list(config.input[0].dims) == [1, 32, 32]
    assert config.output[0].data_type == model_config_pb2.TYPE_FP32
    proto = onnx.load(str(model_dir / "1" / "model.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert {p.key: p.value for p in proto.metadata_props}["input_dtype"] == "uint8"

    entry = zoo.get_entry("lenet5-mnist")
    images = get_dataset("mnist", "test", data_dir=data_dir, transform=lambda image: image)
    chosen = [images[i][0] for i in range(200, 233)]
    pixels = np.stack([entry.preprocess.pixels(image) for image in chosen])
    assert pixels.dtype == np.uint8 and pixels.shape == (33, 1, 32, 32)
    transform = entry.preprocess.torch_transform()
    model = zoo.build_model("lenet5-mnist", weights=run / "model.safetensors")
    with torch.inference_mode():
        expected = model(torch.stack([transform(image) for image in chosen])).numpy()
    session = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    got = session.run(["logits"], {"input": pixels})[0]
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
