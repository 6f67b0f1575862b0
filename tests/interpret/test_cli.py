"""The interpret CLI commands (in-process through `cnnzoo.cli.main`, plus one real subprocess) and
the worker."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo import zoo
from cnnzoo.cli import main
from cnnzoo.fileio import sha256_file
from cnnzoo.interpret.explain import explain
from cnnzoo.interpret.jobs import load_job, run_job
from cnnzoo.interpret.methods import METHODS
from cnnzoo.interpret.render import figure_layout
from tests.interpret.jobfiles import (
    DIGITS,
    manifest_without_timings,
    mnist_job,
    output_files,
    write_job,
)

SEVEN = DIGITS / "7" / "test-00000.png"


def test_layers_prints_names_shapes_params_and_fields(capsys) -> None:
    assert main(["layers", "lenet5-mnist"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "6x28x28" in rows["features.c1"] and "156" in rows["features.c1"]
    assert "(32-5+2*0)/1+1=28" in rows["features.c1"]
    assert "16x16 px, stride 4" in rows["features.s4"]
    assert "whole image" in rows["classifier.output"] and "850" in rows["classifier.output"]


def test_layers_marks_reused_modules(capsys) -> None:
    assert main(["layers", "resnet18-imagenet"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "(runs 2x)" in rows["layer1.0.relu"]
    assert "435x435 px, stride 32" in rows["layer4"]


def test_unknown_model_is_one_line(capsys) -> None:
    assert main(["layers", "lenet7"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnzoo layers: error:") and "\n" not in err and "lenet5-mnist" in err


@pytest.mark.parametrize("method", METHODS)
def test_explain_writes_the_map_that_explain_returns(tmp_path: Path, method: str, capsys) -> None:
    out, raw = tmp_path / "figure.png", tmp_path / "map.npy"
    args = ["explain", str(SEVEN), "--model", "lenet5-mnist", "--method", method]
    assert main([*args, "--out", str(out), "--save-map", str(raw)]) == 0
    captured = capsys.readouterr()
    assert "class 7 (7)" in captured.out and captured.err == ""  # LeNet-5 has max-pooling
    entry = zoo.get_entry("lenet5-mnist")
    with Image.open(SEVEN) as image:
        x = torch.from_numpy(entry.preprocess.apply(image)).unsqueeze(0)
    expected = explain(zoo.build_model("lenet5-mnist", weights="default"), x, method)
    assert np.array_equal(np.load(raw), expected.attribution)
    # The figure: input, map and overlay at 8x (32 px -> 256 px, nearest-neighbour).
    boxes = figure_layout(32, 32, 8)
    with Image.open(out) as figure, Image.open(io.BytesIO(expected.png)) as small:
        assert figure.width == boxes["overlay"][2] + 12
        shown = figure.convert("RGB").crop(boxes["map"])
        assert shown.tobytes() == small.convert("RGB").resize((256, 256), Image.NEAREST).tobytes()


def test_explain_scale_and_the_input_independence_warning(tmp_path: Path, capsys) -> None:
    out = tmp_path / "figure.png"
    cat = next((DIGITS.parent / "cifar10" / "cat").glob("*.png"))
    args = ["explain", str(cat), "--model", "resnet20-cifar10", "--out", str(out)]
    assert main([*args, "--method", "deconvnet", "--scale", "3"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("cnnzoo explain: warning: deconvnet maps of CifarResNet cannot depend")
    with Image.open(out) as figure:
        assert figure.width == figure_layout(32, 32, 3)["overlay"][2] + 12
    assert main([*args, "--method", "guided-backprop", "--scale", "65"]) == 2
    assert "--scale 65 is too large for a 32x32 image; at most 64" in capsys.readouterr().err
    assert main([*args, "--scale", "0"]) == 2


def test_explain_offers_every_method_of_the_table() -> None:
    from cnnzoo.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    method = next(a for a in sub.choices["explain"]._actions if a.dest == "method")
    assert tuple(method.choices) == METHODS


def test_explain_target_and_errors(tmp_path: Path, capsys) -> None:
    out = tmp_path / "map.png"
    assert (
        main(["explain", str(SEVEN), "--model", "lenet5-mnist", "--target", "3", "--out", str(out)])
        == 0
    )
    assert "class 3 (3)" in capsys.readouterr().out
    assert (
        main(
            ["explain", str(SEVEN), "--model", "lenet5-mnist", "--target", "10", "--out", str(out)]
        )
        == 2
    )
    assert "out of range" in capsys.readouterr().err
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    assert main(["explain", str(not_image), "--model", "lenet5-mnist", "--out", str(out)]) == 2
    assert "not a readable image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "explain",
                str(SEVEN),
                "--model",
                "lenet5-mnist",
                "--method",
                "lime",
                "--out",
                str(out),
            ]
        )
    assert exit_info.value.code == 2


def test_job_check_and_errors(tmp_path: Path, capsys, data_dir: Path) -> None:
    job = write_job(tmp_path, mnist_job("check", subset=10, batch_size=10))
    assert main(["job", str(job), "--check"]) == 0
    assert "ok (1 analyses on lenet5-mnist: 01-max-activations)" in capsys.readouterr().out
    bad = write_job(
        tmp_path,
        mnist_job("check", subset=10, batch_size=10).replace("features.c3", "conv2"),
        name="bad.toml",
    )
    assert main(["job", str(bad)]) == 3
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "unknown or unusable layer 'conv2'" in err and "features.c3" in err
    )


def test_worker_runs_each_job_once(tmp_path: Path, capsys, data_dir: Path) -> None:
    jobs, results = tmp_path / "jobs", tmp_path / "results"
    write_job(jobs, mnist_job("small", subset=30, batch_size=30), name="small.toml")
    broken_job = {
        "model": "lenet5-mnist",
        "dataset": {"name": "mnist"},
        "analyses": [{"kind": "filters", "layer": "c1"}],
    }
    broken = write_job(jobs, json.dumps(broken_job), name="broken.json")
    (jobs / "notes.txt").write_text("not a job")
    assert main(["worker", "--jobs", str(jobs), "--results", str(results), "--once"]) == 1
    assert (results / "small" / "index.html").is_file()
    done = json.loads((results / ".status" / "small.toml.json").read_text())
    failed = json.loads((results / ".status" / "broken.json.json").read_text())
    assert done["state"] == "done" and done["index"] == "small/index.html"
    assert failed["state"] == "failed" and "unknown or unusable layer 'c1'" in failed["reason"]
    capsys.readouterr()

    # A restart skips both; fixing the broken file makes it run again.
    assert main(["worker", "--jobs", str(jobs), "--results", str(results), "--once"]) == 0
    assert "running" not in capsys.readouterr().out
    broken.write_text(broken.read_text().replace('"c1"', '"features.c1"'))
    assert main(["worker", "--jobs", str(jobs), "--results", str(results), "--once"]) == 0
    assert "broken.json: running" in capsys.readouterr().out
    assert json.loads((results / ".status" / "broken.json.json").read_text())["state"] == "done"
    assert (
        results / "broken" / "02-filters" / "features.c1.png"
    ).exists() is False  # one analysis: 01
    assert (results / "broken" / "01-filters" / "features.c1.png").is_file()


EDITABLE_JOB = f"""
name = "edited"
model = "lenet5-mnist"

[dataset]
name = "{DIGITS}"

[[analyses]]
kind = "max-activations"
layers = ["features.c1"]
channels = [0, 1]
top_k = 4
"""


def test_worker_reruns_an_edited_job_into_fresh_results(tmp_path: Path, capsys) -> None:
    jobs, results = tmp_path / "jobs", tmp_path / "results"
    job = write_job(jobs, EDITABLE_JOB, name="edited.toml")
    worker = ["worker", "--jobs", str(jobs), "--results", str(results), "--once"]
    assert main(worker) == 0
    out = results / "edited"
    assert (out / "01-max-activations" / "features.c1" / "channel_0001.png").is_file()

    job.write_text(EDITABLE_JOB.replace("channels = [0, 1]", "channels = [3]"))
    assert main(worker) == 0
    status = json.loads((results / ".status" / "edited.toml.json").read_text())
    assert status["state"] == "done" and status["sha256"] == sha256_file(job)
    # The results are those of the edited file alone, as if it had run into a new folder.
    clean = run_job(load_job(job), tmp_path / "clean").parent
    assert output_files(out) == output_files(clean)
    assert manifest_without_timings(out) == manifest_without_timings(clean)
    assert sorted(p.name for p in results.iterdir()) == [".status", "edited"]

    # Another job file with the same job name never replaces these results.
    before = output_files(out)
    write_job(jobs, EDITABLE_JOB.replace("top_k = 4", "top_k = 2"), name="other.toml")
    capsys.readouterr()
    assert main(worker) == 1
    assert "other.toml: failed:" in capsys.readouterr().out
    failed = json.loads((results / ".status" / "other.toml.json").read_text())
    assert "holds results of another job" in failed["reason"]
    assert output_files(out) == before


def test_explain_refuses_an_out_file_that_is_not_png(tmp_path: Path, capsys) -> None:
    out = tmp_path / "map.jpg"
    assert main(["explain", str(SEVEN), "--model", "lenet5-mnist", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "map.jpg: the figure is written as PNG; name a .png file" in err
    assert list(tmp_path.iterdir()) == []


def test_real_script_explain(tmp_path: Path) -> None:
    out = tmp_path / "map.png"
    script = Path(sys.executable).parent / "cnnzoo"
    result = subprocess.run(
        [
            str(script),
            "explain",
            str(SEVEN),
            "--model",
            "lenet5-mnist",
            "--method",
            "deconvnet",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_from_a_model_repository(tmp_path: Path, capsys) -> None:
    """`--repository` uses the exported version's weights and preprocessing (what the server's
    Explain RPC uses), and gives the same map as the zoo's shipped weights they came from."""
    repository = tmp_path / "repo"
    assert main(["export", "lenet5-mnist", "--repository", str(repository)]) == 0
    from_repo, from_zoo = tmp_path / "repo.png", tmp_path / "cnnzoo.zoo.png"
    args = [str(SEVEN), "--model", "lenet5-mnist", "--method", "guided-backprop"]
    assert main(["explain", *args, "--repository", str(repository), "--out", str(from_repo)]) == 0
    assert main(["explain", *args, "--out", str(from_zoo)]) == 0
    assert from_repo.read_bytes() == from_zoo.read_bytes()
    capsys.readouterr()
    assert (
        main(
            [
                "explain",
                str(SEVEN),
                "--model",
                "../../etc",
                "--repository",
                str(repository),
                "--out",
                str(from_repo),
            ]
        )
        == 3
    )
    assert "no model named" in capsys.readouterr().err


@pytest.fixture
def torch_threads():
    """Put PyTorch's thread count back after a test that sets it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_for_explain_and_jobs(tmp_path: Path, capsys, torch_threads) -> None:
    out = tmp_path / "map.png"
    torch.set_num_threads(2)
    assert main(["explain", str(SEVEN), "--model", "lenet5-mnist", "--out", str(out),
                 "--threads", "1"]) == 0  # fmt: skip
    assert torch.get_num_threads() == 1
    job = write_job(tmp_path, mnist_job("threads", subset=10, batch_size=10).replace(
        '[dataset]\nname = "mnist"', f'[dataset]\nname = "{DIGITS}"'))  # fmt: skip
    assert main(["job", str(job), "--check", "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    capsys.readouterr()
    for command in (["explain", str(SEVEN), "--model", "lenet5-mnist", "--out", str(out)],
                    ["job", str(job), "--check"]):  # fmt: skip
        assert main([*command, "--threads", "0"]) == 2
        assert "--threads must be a positive integer, got 0" in capsys.readouterr().err


def test_explain_layer_picks_the_grad_cam_layer(tmp_path: Path, capsys) -> None:
    out, saved = tmp_path / "map.png", tmp_path / "map.npy"
    maps = {}
    for layer in (None, "features.c3", "features.s4"):
        extra = [] if layer is None else ["--layer", layer]
        args = ["explain", str(SEVEN), "--model", "lenet5-mnist", "--method", "grad-cam"]
        assert main([*args, "--out", str(out), "--save-map", str(saved), *extra]) == 0
        maps[layer] = np.load(saved)
    # the default is the last spatial layer that runs once: S4 (5x5) in LeNet-5
    np.testing.assert_array_equal(maps[None], maps["features.s4"])
    assert not np.allclose(maps["features.c3"], maps["features.s4"])  # C3's map is 10x10
    model = zoo.build_model("lenet5-mnist", weights="default")
    image = torch.from_numpy(zoo.get_entry("lenet5-mnist").preprocess.apply(Image.open(SEVEN)))
    direct = explain(model, image[None], "grad-cam", layer="features.c3").attribution
    np.testing.assert_allclose(maps["features.c3"], direct)
    capsys.readouterr()
    args = ["explain", str(SEVEN), "--model", "lenet5-mnist", "--out", str(out)]
    assert main([*args, "--method", "gradient", "--layer", "features.c3"]) == 2
    assert "takes no layer; a layer applies to grad-cam, guided-grad-cam" in capsys.readouterr().err
    assert main([*args, "--method", "grad-cam", "--layer", "features.c9"]) != 0
    err = capsys.readouterr().err
    assert "unknown layer 'features.c9'" in err and "features.c3" in err


def test_explain_quality_prints_the_figures_of_the_map(tmp_path: Path, capsys) -> None:
    out = tmp_path / "map.png"
    args = ["explain", str(SEVEN), "--model", "lenet5-mnist", "--method", "grad-cam"]
    assert main([*args, "--out", str(out), "--quality"]) == 0
    printed = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(printed) if line.startswith("quality of the grad-cam"))
    header, units, *rows = printed[start + 1 : start + 6]
    assert header.split()[:3] == ["method", "deletion", "deletion"]
    assert [row.split()[0] for row in rows] == ["grad-cam", "random", "edges"]
    values = [float(v) for v in rows[0].split()[1:]]
    assert len(values) == 8 and all(-1 <= v <= 100 for v in values)
    assert any("random map" in line for line in printed[start + 6 :])
