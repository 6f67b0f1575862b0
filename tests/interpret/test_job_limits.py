"""Every resource a job file can ask for has a bound derived from the model and the dataset
(D2: `top_k = 100000000` used to pass validation and grow to 23 GB), and a job file cannot make
a run write outside the output root (D16)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnnzoo.cli import main
from cnnzoo.errors import JobFileError
from cnnzoo.interpret.jobs import load_job, run_job
from cnnzoo.interpret.jobs.limits import MAX_JOB_FILE_BYTES
from tests.interpret.jobfiles import DIGITS, write_job

JOB = f"""
name = "bounded"
model = "lenet5-mnist"
[dataset]
name = "{DIGITS}"
"""
MAX = '[[analyses]]\nkind = "max-activations"\nlayers = ["features.c1"]\nchannels = [0]\n'
ACTMAX = '[[analyses]]\nkind = "activation-maximisation"\nlayers = ["features.c1"]\n'


@pytest.mark.parametrize(
    ("analyses", "message"),
    [
        (MAX + "top_k = 100000000\n", "top_k = 100000000 is more than 20, the most allowed"),
        (MAX + "top_k = 21\n", "(the job has 20 images, and each enters a channel's table once)"),
        (ACTMAX + "steps = 10001\n", "steps = 10001 is more than 10000"),
        (ACTMAX + "jitter = 17\n", "jitter = 17 is more than 16, the most allowed (half the 32"),
        (ACTMAX + "batch_size = 300000\n", "batch_size = 300000 is more than 262144"),
        (ACTMAX + "seed = -1\n", "seed must be an integer from 0 to 4294967295, got -1"),
        (ACTMAX + "learning_rate = nan\n", "learning_rate must be between 0 and 10, got nan"),
        (
            '[[analyses]]\nkind = "randomisation"\nimages = ' + str(list(range(65))) + "\n",
            "65 images; an analysis takes at most 64",
        ),
    ],
)
def test_job_parameters_have_bounds(tmp_path: Path, analyses: str, message: str) -> None:
    job = write_job(tmp_path, JOB + analyses)
    with pytest.raises(JobFileError) as caught:
        load_job(job)
    assert message in caught.value.reason, caught.value.reason


def test_tiles_per_analysis_are_bounded(tmp_path: Path, data_dir: Path) -> None:
    mnist = JOB.replace(f'name = "{DIGITS}"', 'name = "mnist"\nsubset = 300')
    every = '[[analyses]]\nkind = "max-activations"\nlayers = ["features.c1", "features.c3", '
    every += '"features.c5"]\nchannels = 120\ntop_k = 200\n'
    with pytest.raises(JobFileError) as caught:
        load_job(write_job(tmp_path, mnist + every), data_dir=str(data_dir))
    assert "top_k x channels = 28400 is more than 20000" in caught.value.reason


def test_bounds_that_depend_on_nothing_but_the_file(tmp_path: Path) -> None:
    too_many = JOB + '[[analyses]]\nkind = "filters"\n' * 65
    with pytest.raises(JobFileError, match="65 analyses; a job has at most 64"):
        load_job(write_job(tmp_path, too_many))
    big = write_job(tmp_path, JOB + "#" * MAX_JOB_FILE_BYTES, name="big.toml")
    with pytest.raises(JobFileError, match=f"at most {MAX_JOB_FILE_BYTES} bytes"):
        load_job(big)
    workers = JOB.replace("[dataset]", "[dataset]\nnum_workers = 65")
    with pytest.raises(JobFileError, match="num_workers must be at most 64, got 65"):
        load_job(write_job(tmp_path, workers + MAX, name="workers.toml"))
    huge_batch = JOB.replace(f'name = "{DIGITS}"', f'name = "{DIGITS}"\nbatch_size = 300000')
    with pytest.raises(JobFileError, match="dataset.batch_size = 300000 is more than 262144"):
        load_job(write_job(tmp_path, huge_batch + MAX, name="batch.toml"))


def test_top_k_defaults_to_every_image_of_a_small_dataset(tmp_path: Path) -> None:
    small = JOB.replace(f'name = "{DIGITS}"', f'name = "{DIGITS}"\nsubset = 5')
    job = load_job(write_job(tmp_path, small + MAX))
    assert job.spec.analyses[0].options.top_k == 5


@pytest.mark.parametrize("output", ["/tmp/elsewhere", "../elsewhere", "a/../../b", "~/x", ""])
def test_a_job_file_cannot_write_outside_the_output_root(tmp_path: Path, output: str) -> None:
    job = write_job(tmp_path, f'output = "{output}"\n' + JOB + MAX)
    with pytest.raises(JobFileError, match="must be a folder inside the output root"):
        load_job(job)


def test_outputs_land_inside_the_output_root(tmp_path: Path, capsys) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    job = write_job(tmp_path / "jobs", 'output = "results/bounded"\n' + JOB + MAX)
    assert main(["job", str(job), "--output-root", str(root), "--no-progress"]) == 0
    assert (root / "results" / "bounded" / "index.html").is_file()
    # without --output-root: the working folder (not the job file's folder)
    cwd = Path.cwd()
    os.chdir(elsewhere)
    try:
        assert main(["job", str(job), "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    assert (elsewhere / "results" / "bounded" / "index.html").is_file()
    # a symbolic link inside the root that leads out of it is not followed out
    (root / "escape").symlink_to(elsewhere)
    linked = write_job(tmp_path / "jobs", 'output = "escape/x"\n' + JOB + MAX, name="link.toml")
    capsys.readouterr()
    assert main(["job", str(linked), "--output-root", str(root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "leads outside the output root" in err
    assert not (elsewhere / "x").exists()
    # the operator's own --out is theirs to choose
    assert run_job(load_job(linked), tmp_path / "chosen").is_file()
