"""Every example job file is valid against the shipped weights and the real datasets."""

from pathlib import Path

import pytest

from cnnzoo.cli import main

JOBS = sorted((Path(__file__).resolve().parents[2] / "examples" / "jobs").glob("*.toml"))


def test_the_examples_folder_has_jobs():
    assert len(JOBS) >= 4


@pytest.mark.parametrize("job", JOBS, ids=[job.stem for job in JOBS])
def test_example_job_passes_validation(job, capsys):
    assert main(["job", str(job), "--check"]) == 0, capsys.readouterr().err
