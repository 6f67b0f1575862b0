"""Fixtures shared by the interpret tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnzoo.interpret.jobs import load_job, run_job
from tests.interpret.jobfiles import DIGITS_JOB, write_job


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of `DIGITS_JOB` (every analysis kind on the example digits)."""
    folder = tmp_path_factory.mktemp("digits")
    job = write_job(folder, DIGITS_JOB)
    return run_job(load_job(job), folder / "out").parent
