"""The `explanation-quality` analysis kind: its table, plots and page; validation before any
work; resuming after a kill and sharding with torchrun write the same files as one clean run."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnzoo.errors import JobFileError, LayerNotFound
from cnnzoo.interpret.jobs import load_job, run_job
from tests.interpret.jobfiles import (
    DIGITS,
    html_links,
    manifest_without_timings,
    one_and_two_rank_runs,
    output_files,
    write_job,
)

QUALITY = f"""
name = "quality"
model = "lenet5-mnist"

[dataset]
name = "{DIGITS}"

[[analyses]]
kind = "explanation-quality"
images = 12
methods = ["gradient", "guided-backprop", "grad-cam"]
steps = 4
sanity_images = 3
randomise = ["classifier.output", "features.c3"]
"""


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("quality")
    return run_job(load_job(write_job(folder, QUALITY)), folder / "out").parent


def test_table_plots_and_page(quality_run: Path) -> None:
    folder = quality_run / "01-explanation-quality"
    summary = json.loads((folder / "quality.json").read_text())
    methods = [row["method"] for row in summary["rows"]]
    assert methods == ["gradient", "guided-backprop", "grad-cam", "random", "edges"]
    assert summary["images"] == 12 and summary["sanity_images"] == 3
    assert summary["model_runtime"] == ["onnxruntime"]  # the model calls, exported once
    for row in summary["rows"]:
        assert row["images"] == 12
        for f in ("mean", "road"):
            curves = row["curves"][f]
            assert len(curves["deletion"]["probability"]) == 5  # steps + 1
            # both curves end where the other starts: the image and the fully removed image
            assert curves["deletion"]["probability"][0] == curves["insertion"]["probability"][-1]
            assert curves["deletion"]["probability"][-1] == curves["insertion"]["probability"][0]
            assert 0 <= row[f"deletion_{f}"] <= 1 and 0 <= row[f"insertion_{f}"] <= 1
        assert row["stages"] == ["classifier.output", "features.c3"]
        assert 0 <= row["average_drop"] <= 100
    # baselines are blind to the model and the class: both checks give similarity 1
    random = summary["rows"][3]
    assert random["mprt_ssim_top"] == pytest.approx(1) and random["logit_rank_abs"] == 1
    table = list(csv.DictReader(io.StringIO((folder / "quality.csv").read_text())))
    assert [r["method"] for r in table] == methods
    per_image = list(csv.DictReader(io.StringIO((folder / "per_image.csv").read_text())))
    assert len(per_image) == 12 * 5
    assert sum(1 for r in per_image if r.get("mprt_ssim_all")) == 3 * 5
    for name in ("curves_mean.png", "curves_road.png", "randomisation.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = quality_run / "01-explanation-quality.html"
    text = page.read_text()
    assert "Most faithful on lenet5-mnist" in text and "<table>" in text
    for link in html_links(page):
        assert (quality_run / link).is_file(), link
    manifest = json.loads((quality_run / "manifest.json").read_text())
    section = manifest["analyses"][0]
    assert section["tables"]["reading"] == summary["reading"]
    assert [f["path"] for f in section["files"]][:3] == [
        "01-explanation-quality/quality.json",
        "01-explanation-quality/quality.csv",
        "01-explanation-quality/per_image.csv",
    ]


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        ('methods = ["gradient", "lrp"]', JobFileError, "methods must list methods from"),
        ('fillings = ["zero"]', JobFileError, "fillings must list fillings from mean, road"),
        ("steps = 2000", JobFileError, "steps = 2000 is more than 256"),
        ("region = 40", JobFileError, "region 40 is larger than the 32x32 image"),
        ("images = [0, 25]", JobFileError, "images [25] out of range"),
        ("noise = 2", JobFileError, "noise must be between 0 and 1"),
        ('layer = "features.c3"\nmethods = ["gradient"]', JobFileError, "layer applies to"),
        ('layer = "nope"', LayerNotFound, "unknown or unusable layer 'nope'"),
        ('randomise = ["features.relu1"]', LayerNotFound, "randomise"),
        ("batch_size = 100000000", JobFileError, "batch_size = 100000000 is more than"),
    ],
)
def test_bad_options_fail_before_any_work(
    tmp_path: Path, extra: str, error: type, message: str
) -> None:
    keys = {line.split("=")[0].strip() for line in extra.splitlines()}
    kept = [line for line in QUALITY.splitlines() if line.split("=")[0].strip() not in keys]
    text = "\n".join(kept) + "\n" + extra + "\n"
    with pytest.raises(error) as caught:
        load_job(write_job(tmp_path, text))
    assert message in caught.value.reason, caught.value.reason
    assert "analyses[0] (explanation-quality)" in caught.value.reason


def _cnnzoo(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnzoo", *args]


TWO_PARTS = QUALITY.replace("images = 12", "images = 70").replace(
    f'name = "{DIGITS}"', 'name = "mnist"\nsubset = 80'
)


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, data_dir: Path) -> None:
    job = write_job(tmp_path, TWO_PARTS)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = killed / ".state" / "01-explanation-quality" / "images-00000.json"
    # The uninterrupted run goes on beside the interrupted one (one thread each).
    uninterrupted = subprocess.Popen(
        _cnnzoo("job", str(job), "--out", str(clean), "--no-progress"), env=env
    )
    run = subprocess.Popen(_cnnzoo("job", str(job), "--out", str(killed), "--no-progress"), env=env)
    deadline = time.monotonic() + 600
    while not first.exists():  # kill once the first of the two parts is done
        assert run.poll() is None, "the job finished before the kill"
        assert time.monotonic() < deadline, f"{first} never appeared"
        time.sleep(0.01)
    run.kill()
    run.wait()
    assert not (killed / "manifest.json").exists()
    subprocess.run(
        _cnnzoo("job", str(job), "--out", str(killed), "--no-progress"), env=env, check=True
    )
    assert uninterrupted.wait(timeout=600) == 0
    assert manifest_without_timings(killed) == manifest_without_timings(clean)
    assert output_files(killed) == output_files(clean)


@pytest.mark.slow
def test_two_rank_torchrun_equals_one_rank(tmp_path: Path, data_dir: Path) -> None:
    job = write_job(tmp_path, TWO_PARTS)
    one, two = one_and_two_rank_runs(job, tmp_path, timeout=600)
    assert manifest_without_timings(one) == manifest_without_timings(two)
    assert output_files(one) == output_files(two)
