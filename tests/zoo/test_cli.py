"""Bad input through the real CLI: one clear line on stderr, a non-zero exit, nothing written."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cnnzoo import zoo
from cnnzoo.cli import main
from cnnzoo.interpret.graphs import GRAPH_METHODS


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cnnzoo {command}: error: ")
    return lines[0]


def test_list_is_a_table_with_every_model(capsys):
    code, out, _ = _run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "MODEL",
        "ARCH",
        "DATASET",
        "INPUT",
        "CLASSES",
        "WEIGHTS",
        "TOP-1",
        "SHA256",
    ]
    assert [line.split()[0] for line in lines[1:]] == zoo.list_models()
    lenet = next(line for line in lines if line.startswith("lenet5-mnist"))
    card = zoo.get_entry("lenet5-mnist").card()
    assert lenet.split()[1] == "lenet5"
    assert "trained" in lenet.split() and card["weights"]["sha256"][:12] in lenet
    assert f"{100 * card['metrics']['top1']:.2f}%" in lenet
    code, out, _ = _run(capsys, "list", "resnet*", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["model"] for r in rows] == zoo.list_models(include="resnet*")
    trained = {r["model"]: r["trained"] for r in rows}
    assert trained == {name: zoo.get_entry(name).weights_file is not None for name in trained}
    assert trained["resnet20-cifar10"] is True and trained["resnet18-imagenet"] is False


@pytest.mark.parametrize("command", [["eval"], ["train"], ["export", "--repository", "r"]])
def test_unknown_model(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, command[0], "lenet7", *command[1:])
    line = _one_error_line(err, command[0])
    assert code == 3
    assert "unknown model 'lenet7'" in line and "lenet5-mnist, resnet18-imagenet" in line
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset(capsys, tmp_path):
    out = tmp_path / "runs"
    code, _, err = _run(
        capsys, "train", "lenet5-mnist", "--data-dir", str(tmp_path / "empty"), "--out", str(out)
    )
    line = _one_error_line(err, "train")
    assert code == 3
    assert str(tmp_path / "empty" / "MNIST" / "raw") in line and "CNNZOO_DATA" in line
    assert not out.exists()
    code, _, err = _run(capsys, "eval", "resnet20-cifar10", "--weights", "x.safetensors",
                        "--data-dir", str(tmp_path))  # fmt: skip
    assert code == 3 and "x.safetensors does not exist" in _one_error_line(err, "eval")
    code, _, err = _run(capsys, "eval", "lenet5-mnist", "--data-dir", str(tmp_path / "empty"))
    line = _one_error_line(err, "eval")
    assert code == 3 and "MNIST" in line and "--download" in line  # eval can fetch MNIST
    code, _, err = _run(capsys, "eval", "lenet5-mnist", "--dataset", str(tmp_path / "nope"))
    line = _one_error_line(err, "eval")
    assert code == 3 and str(tmp_path / "nope") in line
    assert "one subfolder of images per class" in line and "--download" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_corrupt_weights_file(capsys, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    code, _, err = _run(capsys, "eval", "lenet5-mnist", "--weights", str(bad))
    assert code == 2
    assert "not a valid .safetensors file" in _one_error_line(err, "eval")
    truncated = tmp_path / "truncated.safetensors"
    shipped = zoo.get_entry("lenet5-mnist").weights_file
    truncated.write_bytes(shipped.read_bytes()[:5000])
    code, _, err = _run(capsys, "export", "lenet5-mnist", "--weights", str(truncated),
                        "--repository", str(tmp_path / "repo"))  # fmt: skip
    assert code == 2 and "corrupt or truncated" in _one_error_line(err, "export")
    assert not (tmp_path / "repo").exists()


def test_weights_of_another_architecture(capsys, tmp_path):
    # a plain state dict (no zoo metadata) of ResNet-20
    state = {k: v.contiguous() for k, v in zoo.build_model("resnet20-cifar10").state_dict().items()}
    foreign = tmp_path / "resnet20.safetensors"
    save_file(state, str(foreign))
    code, _, err = _run(capsys, "eval", "lenet5-mnist", "--weights", str(foreign))
    line = _one_error_line(err, "eval")
    assert code == 2 and "does not fit the lenet5-mnist architecture" in line
    # zoo weights that say which entry they belong to
    shipped = zoo.get_entry("lenet5-mnist").weights_file
    code, _, err = _run(capsys, "export", "resnet20-cifar10", "--weights", str(shipped),
                        "--repository", str(tmp_path / "repo"))  # fmt: skip
    assert code == 2 and "holds weights of lenet5-mnist" in _one_error_line(err, "export")
    # same keys, wrong shapes
    lenet = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in
             zoo.build_model("lenet5-mnist").state_dict().items()}  # fmt: skip
    wrong = tmp_path / "wide.safetensors"
    save_file(lenet, str(wrong))
    code, _, err = _run(capsys, "eval", "lenet5-mnist", "--weights", str(wrong))
    assert code == 2 and "shape: " in _one_error_line(err, "eval")
    assert not (tmp_path / "repo").exists()


def test_export_into_existing_version_and_into_a_file(
    capsys, exported_lenet, trained_lenet, tmp_path
):
    repository, _ = exported_lenet
    _, run = trained_lenet
    before = sorted(str(p) for p in repository.rglob("*"))
    weights = str(run / "model.safetensors")
    code, _, err = _run(capsys, "export", "lenet5-mnist", "--weights", weights,
                        "--repository", str(repository), "--version", "1")  # fmt: skip
    assert code == 4 and "already has version 1" in _one_error_line(err, "export")
    assert sorted(str(p) for p in repository.rglob("*")) == before
    a_file = tmp_path / "repository.txt"
    a_file.write_text("x")
    code, _, err = _run(capsys, "export", "lenet5-mnist", "--repository", str(a_file))
    assert code == 2 and "is a file" in _one_error_line(err, "export")
    code, _, err = _run(capsys, "export", "--repository", str(tmp_path / "r"))
    assert code == 2 and "--all" in _one_error_line(err, "export")


def test_console_script_in_a_subprocess(tmp_path, trained_lenet):
    """The installed `cnnzoo` script, end to end: export then list and eval.

    Under umask 022 every file of the repository is 0644 and every folder 0755, so a server
    running as another user (Triton, the compose services) can read all of it.
    """
    _, run = trained_lenet
    script = Path(sys.executable).with_name("cnnzoo")
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [str(script), "export", "lenet5-mnist", "--repository", str(tmp_path / "repo"), "--json"],
        capture_output=True, text=True, env=env, timeout=120, umask=0o022,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["version"] == 1 and summary["parity"]["max_abs_diff"] <= 1e-4
    modes = {
        str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
        for p in (tmp_path / "repo").rglob("*")
    }
    folders = {"repo/lenet5-mnist", "repo/lenet5-mnist/1"}
    # the explanation models `cnnzoo export` writes beside the classifier by default
    explanations = [f"repo/lenet5-mnist.{method}" for method in GRAPH_METHODS]
    assert modes == {
        **{name: 0o755 for name in folders},
        **{
            f"repo/lenet5-mnist/{name}": 0o644
            for name in ("config.pbtxt", "labels.txt", "1/model.onnx", "1/model.safetensors",
                         "1/manifest.json")
        },
        **{name: 0o755 for folder in explanations for name in (folder, f"{folder}/1")},
        **{
            f"{folder}/{name}": 0o644
            for folder in explanations
            for name in ("config.pbtxt", "labels.txt", "1/model.onnx", "1/manifest.json")
        },
    }  # fmt: skip
    done = subprocess.run([str(script), "eval", "nope"], capture_output=True, text=True, env=env)
    assert done.returncode == 3
    assert done.stderr.strip().startswith("cnnzoo eval: error: unknown model 'nope'")


def test_a_pickle_pth_is_refused_without_advice_to_unpickle_it(capsys, tmp_path):
    """torch's refusal suggests weights_only=False, which would run the file's code: not passed
    on."""
    import argparse

    from torchvision.models import resnet18

    evil = tmp_path / "evil.pth"
    torch.save({**resnet18().state_dict(), "extra": argparse.Namespace(run="code")}, evil)
    truncated = tmp_path / "truncated.pth"
    torch.save(resnet18().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:4096])
    for path in (evil, truncated):
        code, _, err = _run(capsys, "eval", "resnet18-imagenet", "--weights", str(path))
        line = _one_error_line(err, "eval")
        assert code == 2 and str(path) in line, line
        assert "weights_only" not in line and "trust" not in line, line
    assert "other Python objects, which cnnzoo does not load" in _one_error_line(
        _run(capsys, "eval", "resnet18-imagenet", "--weights", str(evil))[2], "eval"
    )


def test_examples_are_copied_into_a_new_folder(capsys, tmp_path):
    dest = tmp_path / "ex"
    code, out, _ = _run(capsys, "examples", str(dest))
    shipped = Path(__file__).resolve().parents[2] / "examples"
    jobs = len(list((shipped / "jobs").glob("*.toml")))
    assert code == 0 and f"20 MNIST digits, 10 CIFAR-10 images, {jobs} job files" in out
    for kind in ("digits/*/*.png", "cifar10/*/*.png", "jobs/*.toml"):
        copied = sorted(p.relative_to(dest) for p in dest.glob(kind))
        assert copied and copied == sorted(p.relative_to(shipped) for p in shipped.glob(kind))
        assert all((dest / p).read_bytes() == (shipped / p).read_bytes() for p in copied)
    assert not (dest / "__init__.py").exists()
    code, _, err = _run(capsys, "examples", str(dest))  # not empty any more: refused, untouched
    assert code == 4 and "is not empty" in _one_error_line(err, "examples")
    assert [p.name for p in tmp_path.iterdir()] == ["ex"]
