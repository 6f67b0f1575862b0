"""Batch jobs: validation before any work, outputs, gallery, resume after a kill, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.errors import (
    AlreadyExists,
    DatasetNotFound,
    InvalidInput,
    JobFileError,
    LayerNotFound,
    NotFound,
)
from cnnzoo.fileio import sha256_file
from cnnzoo.interpret.jobs import load_job, run_job
from cnnzoo.interpret.jobs.runner import replaced_path
from tests.interpret.jobfiles import (
    DIGITS,
    DIGITS_JOB,
    ROOT,
    html_links,
    manifest_without_timings,
    mnist_job,
    one_and_two_rank_runs,
    output_files,
    write_job,
)


def test_outputs_and_manifest(digits_run: Path) -> None:
    manifest = json.loads((digits_run / "manifest.json").read_text())
    kinds = ["max-activations", "filters", "attributions", "occlusion", "randomisation"]
    kinds += ["evolution", "activation-maximisation", "explanation-quality"]
    assert [a["kind"] for a in manifest["analyses"]] == kinds
    assert manifest["dataset"]["images"] == 20
    assert manifest["model"]["weights_sha256"] == sha256_file(
        ROOT / "zoo/weights/lenet5-mnist/model.safetensors"
    )
    for section in manifest["analyses"]:
        for item in section["files"]:
            path = digits_run / item["path"]
            assert path.is_file() and sha256_file(path) == item["sha256"] and item["caption"]
    tables = manifest["analyses"][0]["tables"]["features.c3"]
    assert sorted(tables, key=int) == ["0", "5", "9"]
    for entries in tables.values():
        assert len(entries) == 9  # 20 images, at most one entry each
        assert len({e["image"] for e in entries}) == 9
        keys = [(-e["value"], e["image"]) for e in entries]
        assert keys == sorted(keys)
        assert all(e["box"][2] - e["box"][0] == 14 for e in entries)  # C3: 14 px field
    with Image.open(digits_run / "02-filters" / "features.c1.png") as image:
        assert image.mode == "RGB"
    occlusion = manifest["analyses"][3]["tables"]["3"]
    assert occlusion["window"] == 8 and occlusion["min_probability"] <= occlusion["max_probability"]
    randomisation = manifest["analyses"][4]["tables"]
    assert randomisation["stages"] == ["trained", "classifier.output", "features.c5"]
    # three measures for the rules, Grad-CAM and guided Grad-CAM, each 1 before randomising
    for measure in ("correlation", "signed", "ssim"):
        assert sorted(randomisation[measure]) == sorted(
            ["gradient", "deconvnet", "guided-backprop", "grad-cam", "guided-grad-cam"]
        )
        assert all(values[0] == 1.0 for values in randomisation[measure].values())
    # each attribution map's scale is in the manifest and drawn under the map
    attributions = manifest["analyses"][2]["tables"]["0"]["methods"]
    assert all(result["peak"] > 0 for result in attributions.values())
    quality = manifest["analyses"][7]["tables"]
    assert [row["method"] for row in quality["rows"]] == ["gradient", "grad-cam", "random", "edges"]


def test_gallery_references_only_existing_files(digits_run: Path) -> None:
    pages = sorted(digits_run.glob("*.html"))
    links = [link for page in pages for link in html_links(page)]
    images = [link for link in links if link.endswith(".png")]
    assert len(images) >= 10 and "manifest.json" in html_links(digits_run / "index.html")
    for link in links:
        assert not link.startswith(("http:", "https:", "/")), link
        assert (digits_run / unquote(link.split("#")[0])).is_file(), link
    # a page per analysis, per max-activations layer and channel, per synthetic-image layer
    names = {page.name for page in pages}
    assert {
        "01-max-activations.features.c3.html",
        "01-max-activations.features.c3.0005.html",
    } <= names
    assert (
        "07-activation-maximisation.features.c3.html" in names
        and "08-explanation-quality.html" in names
        and len(names) == 1 + 8 + 1 + 3 + 1
    )


def test_tiles_carry_their_numbers(digits_run: Path) -> None:
    manifest = json.loads((digits_run / "manifest.json").read_text())
    labels = [str(i) for i in range(10)]
    for entry in manifest["analyses"][0]["tables"]["features.c3"]["5"]:
        assert entry["predicted"] in labels and 0 < entry["probability"] <= 1
        for key in ("tile", "full"):
            assert (digits_run / entry[key]).is_file()
    synthetic = manifest["analyses"][6]["tables"]["features.c3"]
    assert sorted(synthetic, key=int) == ["0", "5", "9"]
    dataset_best = {
        c: e[0]["value"] for c, e in manifest["analyses"][0]["tables"]["features.c3"].items()
    }
    for channel, numbers in synthetic.items():
        assert (numbers["y"], numbers["x"]) == (5, 5)  # the centre of C3's 10x10 map
        # the optimised input excites the unit far more than its starting noise, and more than
        # the best of the 20 digits does
        assert numbers["activation"] > max(numbers["start"], 0) + 1
        assert numbers["activation"] > dataset_best[channel]


def test_another_job_cannot_reuse_the_output(digits_run: Path, tmp_path: Path) -> None:
    other = write_job(tmp_path, DIGITS_JOB.replace("channels = [0, 5, 9]", "channels = [1]"))
    with pytest.raises(AlreadyExists, match="another job.*rerun with --overwrite"):
        run_job(load_job(other), digits_run)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # a folder that is no job's output is never replaced
        with pytest.raises(AlreadyExists, match="not a job folder"):
            run_job(load_job(other), stray, overwrite=overwrite)
    assert [p.name for p in stray.iterdir()] == ["notes.txt"]
    assert not replaced_path(stray).exists()


SMALL_JOB = f"""
name = "small"
model = "lenet5-mnist"

[dataset]
name = "{DIGITS}"

[[analyses]]
kind = "max-activations"
layers = ["features.c1"]
channels = [0, 1]
top_k = 4

[[analyses]]
kind = "attributions"
images = [0]
methods = ["gradient"]
"""


def test_job_overwrite_replaces_another_jobs_results(tmp_path: Path, capsys) -> None:
    first = write_job(tmp_path / "a", SMALL_JOB)
    second = write_job(tmp_path / "b", SMALL_JOB.replace("channels = [0, 1]", "channels = [4]"))
    out, clean = tmp_path / "out", tmp_path / "clean"
    run_job(load_job(first), out)
    assert (out / "01-max-activations" / "features.c1" / "channel_0001.png").is_file()
    before = output_files(out)

    # Plain `cnnzoo job`: one clear error naming the flag, the results untouched.
    assert main(["job", str(second), "--out", str(out), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds results of another job" in err and "--overwrite" in err
    assert output_files(out) == before

    # An earlier replacement that was interrupted left the old results aside: also cleared.
    replaced_path(out).mkdir()
    (replaced_path(out) / "stale.png").write_bytes(b"old")
    assert main(["job", str(second), "--out", str(out), "--overwrite", "--no-progress"]) == 0
    run_job(load_job(second), clean)
    # Exactly the new job's files: nothing of the first job is left in the folder or beside it.
    assert output_files(out) == output_files(clean)
    assert manifest_without_timings(out) == manifest_without_timings(clean)
    assert not replaced_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "clean", "out"]

    # The same job again (with or without the flag) resumes: everything is already done.
    assert main(["job", str(second), "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert output_files(out) == output_files(clean)


# -- validation: one clear error, before any work ----------------------------------------------

VALID = mnist_job("valid", subset=10, batch_size=10)


@pytest.mark.parametrize(
    ("text", "suffix", "error", "message"),
    [
        ('name = "x"\nmodel = ', ".toml", JobFileError, "not valid TOML"),
        ('{"model": "lenet5-mnist",', ".json", JobFileError, "not valid JSON"),
        ("[1, 2]", ".json", JobFileError, "top level must be an object"),
        (VALID, ".yaml", JobFileError, "end in .toml or .json"),
        (VALID + 'colour = "red"\n', ".toml", JobFileError, "unknown key(s) colour"),
        (
            VALID.replace('model = "lenet5-mnist"', 'model = "lenet7"'),
            ".toml",
            NotFound,
            "lenet5-mnist",
        ),
        pytest.param(
            VALID.replace('"features.c3"', '"features.c9"'),
            ".toml",
            LayerNotFound,
            "valid layers: features, features.c1",
            marks=pytest.mark.data,
        ),
        pytest.param(
            VALID.replace('"features.c3"', '"classifier.f6"'),
            ".toml",
            LayerNotFound,
            "unusable layer 'classifier.f6'",
            marks=pytest.mark.data,
        ),
        (
            VALID.replace('name = "mnist"', 'name = "no-such-folder/"'),
            ".toml",
            DatasetNotFound,
            "no-such-folder",
        ),
        pytest.param(
            VALID.replace("channels = 16", "channels = [3, 99]"),
            ".toml",
            JobFileError,
            "[99] out of range",
            marks=pytest.mark.data,
        ),
        (
            VALID.replace("channels = 16", 'channels = "all"'),
            ".toml",
            JobFileError,
            "channels must be",
        ),
        (VALID.replace("max-activations", "heatmap"), ".toml", JobFileError, "kind must be one of"),
        (VALID + 'weights = "missing.safetensors"\n', ".toml", JobFileError, "unknown key"),
        (
            VALID.replace(
                'model = "lenet5-mnist"', 'model = "lenet5-mnist"\nweights = "missing.safetensors"'
            ),
            ".toml",
            NotFound,
            "missing.safetensors does not exist",
        ),
        pytest.param(
            VALID + '[[analyses]]\nkind = "evolution"\ncheckpoints = "nowhere"\n',
            ".toml",
            NotFound,
            "no epoch_NNN.safetensors",
            marks=pytest.mark.data,
        ),
        pytest.param(
            VALID + '[[analyses]]\nkind = "attributions"\nimages = [10]\n',
            ".toml",
            JobFileError,
            "[10] out of range",
            marks=pytest.mark.data,
        ),
        (
            'model = "lenet5-mnist"\n[dataset]\nname = "mnist"\n',
            ".toml",
            JobFileError,
            "no [[analyses]]",
        ),
        # options that used to pass `--check` and fail only once the run had started
        pytest.param(
            VALID + '[[analyses]]\nkind = "occlusion"\nwindow = 100\n',
            ".toml",
            JobFileError,
            "window = 100 exceeds the lenet5-mnist input of 32 px",
            marks=pytest.mark.data,
        ),
        pytest.param(
            VALID + '[[analyses]]\nkind = "occlusion"\nwindow = 8\nstride = 33\n',
            ".toml",
            JobFileError,
            "stride = 33 exceeds",
            marks=pytest.mark.data,
        ),
        pytest.param(
            VALID + '[[analyses]]\nkind = "occlusion"\nlayer = "classifier.output"\n',
            ".toml",
            JobFileError,
            "'classifier.output' has no feature maps",
            marks=pytest.mark.data,
        ),
        pytest.param(
            VALID + '[[analyses]]\nkind = "occlusion"\nimages = [0, 12]\n',
            ".toml",
            JobFileError,
            "[12] out of range",
            marks=pytest.mark.data,
        ),
        pytest.param(
            VALID + '[[analyses]]\nkind = "randomisation"\nimages = [10]\n',
            ".toml",
            JobFileError,
            "[10] out of range",
            marks=pytest.mark.data,
        ),
        (
            VALID + '[[analyses]]\nkind = "randomisation"\nimages = []\n',
            ".toml",
            JobFileError,
            "images must list at least one",
        ),
        (VALID + "top_k = 0\n", ".toml", JobFileError, "top_k must be a positive integer"),
        (VALID.replace("channels = 16", "channels = []"), ".toml", JobFileError, "at least one"),
        (
            VALID.replace('["features.c1", "features.c3"]', "[]"),
            ".toml",
            JobFileError,
            "layers must list at least one layer",
        ),
        pytest.param(
            VALID + '[[analyses]]\nkind = "evolution"\nlayer = "features.c3"\nchannels = [16]\n',
            ".toml",
            JobFileError,
            "channel(s) [16] out of range for layer 'features.c3', which has 16 channels",
            marks=pytest.mark.data,
        ),
        (
            VALID + '[[analyses]]\nkind = "attributions"\nmethods = ["gradient", "lime"]\n',
            ".toml",
            JobFileError,
            "methods must list methods from gradient, deconvnet, guided-backprop, occlusion",
        ),
        (
            VALID + '[[analyses]]\nkind = "attributions"\nmethods = []\n',
            ".toml",
            JobFileError,
            "methods must list methods from",
        ),
        (
            VALID + '[[analyses]]\nkind = "randomisation"\nmethods = ["lrp"]\n',
            ".toml",
            JobFileError,
            "methods must list methods from gradient, deconvnet, guided-backprop, occlusion",
        ),
        (
            VALID.replace("batch_size = 10", "batch_size = 10\nnum_workers = -1"),
            ".toml",
            JobFileError,
            "num_workers must be an integer >= 0",
        ),
    ],
)
def test_bad_job_files_fail_before_any_work(
    tmp_path: Path, text: str, suffix: str, error: type, message: str
) -> None:
    job = write_job(tmp_path / "jobs", text, name=f"job{suffix}")
    with pytest.raises(error) as caught:
        load_job(job)
    assert message in caught.value.reason
    assert "\n" not in caught.value.reason
    assert not (tmp_path / "jobs" / "out").exists() and not Path("out/valid").exists()


def test_job_files_take_every_method_of_the_table() -> None:
    from cnnzoo.interpret.jobs.kinds.attributions import AttributionsOptions
    from cnnzoo.interpret.jobs.kinds.explanation_quality import ExplanationQualityOptions
    from cnnzoo.interpret.jobs.kinds.randomisation import RandomisationOptions
    from cnnzoo.interpret.methods import METHODS, RULE_METHODS
    from cnnzoo.interpret.rules import Rule
    from cnnzoo.interpret.sanity import ADEBAYO_METHODS

    for options in (AttributionsOptions, RandomisationOptions, ExplanationQualityOptions):
        assert options.parse({"methods": list(METHODS)}, "job").methods == METHODS
    assert AttributionsOptions().methods == ExplanationQualityOptions().methods == METHODS
    # the rules and Grad-CAM, guided Grad-CAM between them (Adebayo et al.'s contrast)
    assert RandomisationOptions().methods == ADEBAYO_METHODS
    assert tuple(rule.value for rule in Rule) == RULE_METHODS
    assert {"grad-cam", "guided-grad-cam", *RULE_METHODS} == set(ADEBAYO_METHODS)


def test_evolution_checkpoints_must_fit_the_model(tmp_path: Path, data_dir: Path) -> None:
    from safetensors.torch import save_file

    checkpoints = tmp_path / "run" / "epochs"
    checkpoints.mkdir(parents=True)
    save_file({"conv.weight": torch.zeros(4, 3, 3, 3)}, str(checkpoints / "epoch_001.safetensors"))
    job = write_job(
        tmp_path,
        VALID + '[[analyses]]\nkind = "evolution"\ncheckpoints = "run"\n',
    )
    with pytest.raises(
        InvalidInput,
        match=r"analyses\[1\] \(evolution\): checkpoints: epoch_001.safetensors does not fit "
        "the lenet5-mnist",
    ):
        load_job(job)


def test_missing_mnist_names_the_folder(tmp_path: Path) -> None:
    job = write_job(tmp_path, VALID)
    with pytest.raises(DatasetNotFound, match="MNIST"):
        load_job(job, data_dir=str(tmp_path / "empty"))


# -- resume after a real kill ------------------------------------------------------------------


def _cnnzoo(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnzoo", *args]


def _kill_when(
    process: subprocess.Popen,
    appeared: Path,
    timeout: float = 120,
    sig: signal.Signals = signal.SIGKILL,
) -> bool:
    """Send `sig` to `process` as soon as `appeared` exists; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if appeared.exists():
            process.send_signal(sig)
            process.wait()
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.01)
    process.kill()
    raise AssertionError(f"{appeared} never appeared")


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, data_dir: Path) -> None:
    extra = '[[analyses]]\nkind = "attributions"\nimages = [0, 1, 2]\n'
    job = write_job(tmp_path, mnist_job("resume", subset=1500, batch_size=25, extra=extra))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    state = killed / ".state" / "01-max-activations"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    # The uninterrupted run goes on beside the interrupted ones (one thread each).
    uninterrupted = subprocess.Popen(
        _cnnzoo("job", str(job), "--out", str(clean), "--no-progress"), env=env
    )
    # First kill: in the middle of the dataset scan, right after its first checkpoint.
    run = subprocess.Popen(_cnnzoo("job", str(job), "--out", str(killed), "--no-progress"), env=env)
    assert _kill_when(run, state / "scan-rank0-of-1.safetensors"), (
        "the job finished before the kill"
    )
    assert not (killed / "manifest.json").exists() and not (state / "topk.safetensors").exists()
    # Second kill: once the first layer's grids are written, before the rest.
    run = subprocess.Popen(_cnnzoo("job", str(job), "--out", str(killed), "--no-progress"), env=env)
    # (about 2 s of work, the C3 grids and the attributions, remain after this marker)
    assert _kill_when(run, state / "layer-features.c1.json"), "the job finished before the kill"
    assert not (killed / "manifest.json").exists()
    subprocess.run(
        _cnnzoo("job", str(job), "--out", str(killed), "--no-progress"), env=env, check=True
    )
    assert uninterrupted.wait(timeout=600) == 0

    assert manifest_without_timings(killed) == manifest_without_timings(clean)
    assert output_files(killed) == output_files(clean)
    leftovers = [p for p in killed.rglob("*.tmp")]
    assert leftovers == []


@pytest.mark.slow
def test_worker_stops_cleanly_on_sigterm_and_resumes_the_job(
    tmp_path: Path, data_dir: Path
) -> None:
    jobs, results = tmp_path / "jobs", tmp_path / "results"
    write_job(jobs, mnist_job("stopped", subset=1500, batch_size=25), name="stopped.toml")
    state = results / "stopped" / ".state" / "01-max-activations"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = _cnnzoo(
        "worker", "--jobs", str(jobs), "--results", str(results), "--poll-seconds", "0.2"
    )

    run = subprocess.Popen(worker, env=env, stdout=subprocess.PIPE, text=True)
    assert _kill_when(run, state / "scan-rank0-of-1.safetensors", sig=signal.SIGTERM), (
        "the job finished before the signal"
    )
    assert run.returncode == 0, "the worker must exit cleanly on SIGTERM"
    assert "SIGTERM received" in run.stdout.read()
    run.stdout.close()
    # the interrupted job has no status, so the next start resumes it instead of skipping it
    assert not (results / ".status" / "stopped.toml.json").exists()
    assert list(results.rglob("*.tmp")) == []

    subprocess.run([*worker, "--once"], env=env, check=True, capture_output=True)
    status = json.loads((results / ".status" / "stopped.toml.json").read_text())
    assert status["state"] == "done"
    assert (results / "stopped" / "index.html").is_file()


# -- sharding with torchrun --------------------------------------------------------------------


@pytest.mark.slow
def test_two_rank_torchrun_equals_one_rank(tmp_path: Path, data_dir: Path) -> None:
    job = write_job(tmp_path, mnist_job("shards", subset=400, batch_size=50))
    one, two = one_and_two_rank_runs(job, tmp_path, timeout=300)
    assert manifest_without_timings(one) == manifest_without_timings(two)
    assert output_files(one) == output_files(two)


def test_weights_from_a_model_folder(tmp_path: Path) -> None:
    folder = ROOT / "zoo" / "weights" / "lenet5-mnist"
    job = write_job(
        tmp_path,
        f'model = "lenet5-mnist"\nweights = "{folder}"\n[dataset]\nname = "{DIGITS}"\n'
        '[[analyses]]\nkind = "filters"\n',
    )
    out = run_job(load_job(job), tmp_path / "out").parent
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["weights_sha256"] == sha256_file(folder / "model.safetensors")
