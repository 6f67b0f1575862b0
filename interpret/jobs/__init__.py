"""Batch interpretability jobs: job files, resumable and shardable runs, the gallery, the worker."""

from cnnzoo.interpret.jobs.runner import run_job as run_job
from cnnzoo.interpret.jobs.spec import JobSpec as JobSpec
from cnnzoo.interpret.jobs.spec import load_job as load_job
from cnnzoo.interpret.jobs.spec import read_job as read_job
from cnnzoo.interpret.jobs.spec import validate_job as validate_job

__all__ = ["JobSpec", "load_job", "read_job", "run_job", "validate_job"]
