"""Batch interpretability jobs: job files, resumable and shardable runs, the gallery, the worker.

Layout: `options` (typed, checked option fields), `world` (the model, weights, dataset and
layers a job opens once), `context` (what a running analysis sees), `analysis` (the shape of a
kind), `kinds/` (one module per kind), `registry` (kind name -> class), `spec` (job files),
`runner` (a run), `gallery`, `distributed` (torchrun), `worker`.
"""

from cnnzoo.interpret.jobs.runner import run_job as run_job
from cnnzoo.interpret.jobs.spec import Job as Job
from cnnzoo.interpret.jobs.spec import JobSpec as JobSpec
from cnnzoo.interpret.jobs.spec import load_job as load_job
from cnnzoo.interpret.jobs.spec import read_job as read_job
from cnnzoo.interpret.jobs.spec import validate_job as validate_job

__all__ = ["Job", "JobSpec", "load_job", "read_job", "run_job", "validate_job"]
