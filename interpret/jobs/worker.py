"""`cnnzoo worker`: run every job file dropped into a folder, once.

Each job file `<jobs>/<file>.toml|.json` runs into `<results>/<job name>/`. When it ends, a status
file `<results>/.status/<file>.json` records `done` or `failed` (with the reason) and the job
file's sha256; a restarted worker skips files whose status matches their current contents, and
resumes (see `cnnzoo.interpret.jobs.runner`) a job that was interrupted before it had a status.

Editing a job file makes it run again: when its results folder holds the results of an earlier
version of the same file, the new run replaces them (the old results stay in a hidden folder
beside it until the new run has finished, so the folder never mixes the two). Results of another
job file that happens to use the same job name are never replaced: that run fails and says so.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cnnzoo.errors import CnnzooError, NotFound
from cnnzoo.fileio import atomic_write_json, sha256_file
from cnnzoo.interpret.jobs.runner import output_owner, run_job
from cnnzoo.interpret.jobs.spec import load_job

__all__ = ["pending_jobs", "run_worker", "status_path"]

STATUS_DIR = ".status"
_SUFFIXES = (".toml", ".json")


class _Stopped(BaseException):
    """Raised in the main thread on SIGTERM/SIGINT.

    A BaseException so that the per-job `except Exception` does not record the interrupted job as
    failed: it has no status yet, so the next start resumes it (writes are atomic).
    """


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def stop(signum: int, _frame: object) -> None:
        raise _Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def status_path(results: Path, job_file: Path) -> Path:
    return results / STATUS_DIR / f"{job_file.name}.json"


def _status(results: Path, job_file: Path) -> dict[str, Any] | None:
    path = status_path(results, job_file)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pending_jobs(jobs: Path, results: Path) -> list[Path]:
    """Job files without a status for their current contents, by name."""
    found = []
    for path in sorted(jobs.iterdir()):
        if path.name.startswith(".") or path.suffix not in _SUFFIXES or not path.is_file():
            continue
        status = _status(results, path)
        if status is None or status.get("sha256") != sha256_file(path):
            found.append(path)
    return found


def _earlier_version(job_file: Path, results: Path, out: Path) -> bool:
    """Whether `out` holds results of this job file (of an earlier version of it)."""
    owner = output_owner(out)
    if not owner:
        return False
    if "source" in owner:
        return owner["source"] == str(job_file.resolve())
    return _status(results, job_file) is not None  # a claim that does not name its file


def _run_one(
    job_file: Path, results: Path, data_dir: str | None, log: Callable[[str], None]
) -> dict[str, Any]:
    digest = sha256_file(job_file)
    started = time.time()
    try:
        job = load_job(job_file, data_dir=data_dir)
        out = results / job.spec.name
        overwrite = _earlier_version(job_file, results, out)
        index = run_job(job, out, overwrite=overwrite)
        status = {"state": "done", "index": str(index.relative_to(results.resolve()))}
        log(f"{job_file.name}: done -> {index}")
    except CnnzooError as err:
        status = {"state": "failed", "reason": err.reason}
        log(f"{job_file.name}: failed: {err.reason}")
    except Exception as err:  # a bug must not stop the worker; the traceback goes to the log
        traceback.print_exc(file=sys.stderr)
        status = {"state": "failed", "reason": f"internal error: {type(err).__name__}: {err}"}
        log(f"{job_file.name}: failed: internal error: {err}")
    status.update(
        {"job_file": job_file.name, "sha256": digest, "seconds": round(time.time() - started, 3)}
    )
    atomic_write_json(status_path(results, job_file), status)
    return status


def run_worker(
    jobs: str | Path,
    results: str | Path,
    *,
    once: bool = False,
    poll_seconds: float = 5.0,
    data_dir: str | None = None,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> int:
    """Run pending jobs; with `once`, return after one sweep, else poll until SIGTERM/SIGINT.

    A signal stops the worker at once, also in the middle of a job: that job keeps no status, so
    the next start resumes it where it stopped.

    Returns:
        The number of jobs that failed in the last sweep (with `once`); 0 after a signal.
    """
    jobs, results = Path(jobs), Path(results)
    if not jobs.is_dir():
        raise NotFound(f"jobs folder {jobs} does not exist")
    results.mkdir(parents=True, exist_ok=True)
    log(f"worker: watching {jobs} for .toml/.json job files, results in {results}")
    try:
        with _stop_on_signals():
            while True:
                failed = 0
                for job_file in pending_jobs(jobs, results):
                    log(f"{job_file.name}: running")
                    failed += _run_one(job_file, results, data_dir, log)["state"] == "failed"
                if once:
                    return failed
                time.sleep(poll_seconds)
    except _Stopped as stopped:
        log(f"worker: {stopped} received, stopping (an unfinished job resumes on the next start)")
        return 0
