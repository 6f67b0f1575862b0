"""Jobs meeting a broken disk: a killed run's half-written temporary files are removed on resume
(D7), and an output folder that cannot be written or fills up ends the run with one clear
line, no traceback (D11), keeping what was finished."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from cnnzoo.cli import main
from cnnzoo.interpret.jobs import load_job, run_job
from tests.interpret.jobfiles import DIGITS, output_files, write_job

JOB = f"""
name = "faults"
model = "lenet5-mnist"
[dataset]
name = "{DIGITS}"
[[analyses]]
kind = "max-activations"
layers = ["features.c1", "features.c3"]
channels = [0, 1]
top_k = 4
[[analyses]]
kind = "filters"
"""


def test_resume_removes_what_a_killed_run_half_wrote(tmp_path: Path) -> None:
    job = write_job(tmp_path, JOB)
    out = tmp_path / "out"
    run_job(load_job(job), out)
    finished = output_files(out)
    # What kill -9 leaves: an atomic write's temporary file, empty, beside its target.
    stale = [
        out / "01-max-activations" / "features.c3" / ".channel_0001.png.0a1b2c3d.tmp",
        out / ".state" / "01-max-activations" / ".layer-features.c3.json.deadbeef.tmp",
    ]
    for path in stale:
        path.touch()
    kept = out / "01-max-activations" / ".notes.tmp"  # not an atomic write's: not ours to delete
    kept.write_text("mine")
    run_job(load_job(job), out)  # resumes: everything is already done
    assert [p for p in stale if p.exists()] == []
    assert kept.read_text() == "mine"
    kept.unlink()
    assert output_files(out) == finished


def test_an_unwritable_output_folder_is_one_clear_line(tmp_path: Path, capsys) -> None:
    job = write_job(tmp_path, JOB)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out, problem in [(blocker / "out", "Not a directory"), (Path("/sys/cnnzoo-out"), "")]:
        root = ["--output-root", "/sys"] if str(out).startswith("/sys") else []
        assert main(["job", str(job), "--out", str(out), *root, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"cnnzoo job: error: cannot write the output folder {out}: ")
        assert problem in err
        assert "choose another one with --out" in err


def test_a_full_disk_is_one_clear_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    job = write_job(tmp_path, JOB)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cnnzoo", "job", str(job), "--out", str(out), "--no-progress"]

    def small_files() -> None:  # the disk "fills up" at 6 kB a file (CPython ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6_000, 6_000))

    full = subprocess.run(
        command, preexec_fn=small_files, capture_output=True, text=True, timeout=300
    )
    assert full.returncode == 7, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
    assert lines[0].startswith("cnnzoo job: error: cannot write ") and str(out) in lines[0]
    assert "File too large" in lines[0] and "running the job again resumes it" in lines[0]
    assert list(out.rglob("*.tmp")) == []  # nothing half-written
    assert not (out / "index.html").exists()
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY
    assert main(["job", str(job), "--out", str(out), "--no-progress"]) == 0  # room again
    assert (out / "index.html").is_file()
