"""`cnnzoo export --skip-unchanged`: real exports into a temporary repository.

One repository goes through the cases in order (each export is a real ONNX export with its parity
check, about a second for LeNet-5): the same export again writes nothing; without the flag a new
version appears as before; other weights, another precision or a damaged latest version each give
a new version.
"""

import json

import pytest

from cnnzoo import zoo
from cnnzoo.cli import main
from cnnzoo.errors import InvalidInput
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.export import ExportOptions, export_model
from cnnzoo.zoo.repository import ModelRepository

MODEL = "lenet5-mnist"


def _snapshot(root):
    """Every path under `root` with its sha256 (files), size and modification time."""
    return {
        str(p.relative_to(root)): (
            (sha256_file(p), p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        )
        for p in sorted(root.rglob("*"))
    }


def _export(repository, weights, **options):
    return export_model(ExportOptions(MODEL, repository, weights=weights, **options))


def test_skip_unchanged_writes_a_version_only_when_something_changed(
    trained_lenet, tmp_path, capsys
):
    _, run = trained_lenet
    trained = run / "model.safetensors"
    shipped = zoo.get_entry(MODEL).weights_file

    # an empty repository: the flag exports version 1 as usual
    first = _export(tmp_path, trained, skip_unchanged=True)
    assert (first["version"], first["skipped"]) == (1, False)
    assert first["source_weights_sha256"] == sha256_file(trained)

    # the same weights, precision and config again: nothing is written
    before = _snapshot(tmp_path)
    again = _export(tmp_path, trained, skip_unchanged=True)
    assert again["skipped"] is True and again["version"] == 1
    assert again["path"] == str(tmp_path / MODEL / "1")
    assert "parity" not in again
    assert _snapshot(tmp_path) == before
    assert not [p for p in (tmp_path / MODEL).iterdir() if p.name.startswith(".")]

    # without the flag: a new version, as before
    plain = _export(tmp_path, trained)
    assert (plain["version"], plain["skipped"]) == (2, False)
    assert ModelRepository(tmp_path).versions(MODEL) == [1, 2]

    # the flag compares with the latest version (now 2)
    assert _export(tmp_path, trained, skip_unchanged=True)["version"] == 2

    # other weights: a new version from them
    other = _export(tmp_path, shipped, skip_unchanged=True)
    assert (other["version"], other["skipped"]) == (3, False)
    manifest = ModelRepository(tmp_path).verify(MODEL, 3)
    assert manifest.source_weights_sha256 == sha256_file(shipped) != sha256_file(trained)

    # the CLI with --all (the shipped entries): one line naming the up-to-date version, while
    # the shipped models the repository lacks get their version 1
    before = _snapshot(tmp_path / MODEL)
    code = main(["export", "--all", "--skip-unchanged", "--repository", str(tmp_path),
                 "--explanations", "none"])  # fmt: skip
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    line = next(line for line in out.splitlines() if line.startswith(f"{MODEL}:"))
    assert "up to date, version 3" in line and "nothing written" in line
    assert sha256_file(shipped)[:12] in line
    assert _snapshot(tmp_path / MODEL) == before
    others = [
        name for name in zoo.list_models() if name != MODEL and zoo.get_entry(name).weights_file
    ]
    assert others and all(ModelRepository(tmp_path).versions(name) == [1] for name in others)

    # another precision: a new version
    half = _export(tmp_path, shipped, fp16=True, skip_unchanged=True)
    assert (half["version"], half["precision"], half["skipped"]) == (4, "fp16", False)
    assert _export(tmp_path, shipped, fp16=True, skip_unchanged=True)["skipped"] is True
    # ... and back to fp32: version 3 is not the latest any more, so a new version again
    assert _export(tmp_path, shipped, skip_unchanged=True)["version"] == 5

    # a damaged latest version is not up to date: a sound new version replaces it as latest
    onnx_file = tmp_path / MODEL / "5" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-16])
    repaired = _export(tmp_path, shipped, skip_unchanged=True)
    assert (repaired["version"], repaired["skipped"]) == (6, False)
    assert ModelRepository(tmp_path).verify(MODEL, 6).version == 6


def test_skip_unchanged_json_summary_and_bad_combinations(exported_lenet, trained_lenet, capsys):
    """On the shared repository (version 1 of the short run): a skip must write nothing there."""
    repository, _ = exported_lenet
    _, run = trained_lenet
    weights = str(run / "model.safetensors")
    before = _snapshot(repository)
    code = main(["export", MODEL, "--weights", weights, "--repository", str(repository),
                 "--skip-unchanged", "--json"])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["skipped"] is True and summary["version"] == 1
    assert summary["source_weights_sha256"] == sha256_file(weights)
    assert _snapshot(repository) == before

    # --version names a version to write; --skip-unchanged compares with the latest one
    with pytest.raises(InvalidInput, match="--skip-unchanged"):
        _export(repository, weights, version=7, skip_unchanged=True)
    code = main(["export", MODEL, "--weights", weights, "--repository", str(repository),
                 "--skip-unchanged", "--version", "7"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("cnnzoo export: error: --skip-unchanged")
    # a missing weights file: one clear line and exit code, not a traceback
    code = main(["export", MODEL, "--weights", str(repository / "nope.safetensors"),
                 "--repository", str(repository), "--skip-unchanged"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 3 and "nope.safetensors does not exist" in err
    assert _snapshot(repository) == before
