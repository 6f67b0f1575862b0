"""Every example job file is valid against the shipped weights and the real datasets."""

import re
from pathlib import Path

import pytest

from cnnzoo.cli import main

JOBS = sorted((Path(__file__).resolve().parents[2] / "examples" / "jobs").glob("*.toml"))
# jobs on a named dataset need the data folder; the others read the shipped example images
NAMED = re.compile(r'^name = "(mnist|cifar10)"', re.MULTILINE)


def test_the_examples_folder_has_jobs():
    assert len(JOBS) >= 4


@pytest.mark.parametrize(
    "job",
    [
        pytest.param(job, marks=pytest.mark.data) if NAMED.search(job.read_text()) else job
        for job in JOBS
    ],
    ids=[job.stem for job in JOBS],
)
def test_example_job_passes_validation(job, capsys):
    assert main(["job", str(job), "--check"]) == 0, capsys.readouterr().err
