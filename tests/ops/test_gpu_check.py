"""scripts/gpu-check.sh rehearsed on a machine without a GPU, and scripts/gpu_pack.py's parts.

The flow the GPU run depends on, end to end and for real: parts made by gpu_pack.py's split are
found, reassembled, checked and installed; the environment is reported; `pytest -m gpu` runs
(every test skips here, saying why); the GPU steps skip with their reason; OUTDIR holds at most
8 files under 16 MiB, and check.json says what happened. Then the failure paths: a missing part
is named, a step past its budget is stopped and the next one still runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402 - scripts/ is not a package
import gpu_pack  # noqa: E402

PROBE = "cnnzoo_gpu_probe"


def _no_gpu_here() -> None:
    import torch

    from cnnzoo.serving.runtime import cuda_unavailable_reason

    if torch.cuda.is_available() or cuda_unavailable_reason() is None:
        pytest.skip("a GPU is here: run scripts/gpu-check.sh itself")


def _wheel(folder: Path) -> Path:
    """A one-module pure-Python wheel (what pip installs with --target)."""
    path = folder / f"{PROBE}-1.0-py3-none-any.whl"
    info = f"{PROBE}-1.0.dist-info"
    files = {
        f"{PROBE}.py": "VALUE = 42\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: cnnzoo-gpu-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


@pytest.fixture
def parts(tmp_path: Path) -> Path:
    """`.gpuN/` folders as scripts/gpu-pack.sh leaves them, holding the probe wheel."""
    stage = tmp_path / "stage"
    (stage / "wheels").mkdir(parents=True)
    _wheel(stage / "wheels")
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (stage / "pack.json").write_text(json.dumps({"python": python, "requirements": {}}))
    archive = tmp_path / "software.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(stage, arcname=".")
    where = tmp_path / "checkout"
    where.mkdir()
    folders = gpu_pack.split([archive], 400, where)
    assert len(folders) >= 2 and [f.name for f in folders][:2] == [".gpu1", ".gpu2"]
    return where


def _check(out: Path, parts: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "scripts" / "gpu-check.sh"), str(out), "--parts", str(parts),
         "--work", str(work), *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env=dict(os.environ, PYTHON=sys.executable),
    )  # fmt: skip


def test_the_check_runs_its_steps_and_reports_where_there_is_no_gpu(parts, tmp_path):
    _no_gpu_here()
    out, work = tmp_path / "out", tmp_path / "work"
    result = _check(out, parts, work)
    assert result.returncode == 0, result.stdout + result.stderr  # skipped is not failed
    report = json.loads((out / "check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == [s.name for s in gpu_check.STEPS]
    assert steps["setup"]["status"] == "passed"
    assert steps["setup"]["details"]["installed"] == [f"{PROBE}-1.0-py3-none-any.whl"]
    assert (work / "site" / f"{PROBE}.py").read_text() == "VALUE = 42\n"
    assert steps["env"]["status"] == "passed"
    assert report["environment"]["ort_cuda"] is False and report["environment"]["problems"]
    # pytest ran the GPU tests: all skip here, each with its reason
    assert steps["tests"]["status"] == "passed", steps["tests"]
    assert "skipped" in steps["tests"]["details"]["summary"]
    assert "failed" not in steps["tests"]["details"]["summary"]
    pytest_text = (out / "pytest.txt").read_text()
    assert "SKIPPED" in pytest_text and "no CUDA for" in pytest_text
    for name in ("export", "bench", "train-speed", "train"):
        assert steps[name]["status"] == "skipped", steps[name]
        assert steps[name]["reason"].startswith("no CUDA for")
    # OUTDIR: what check.json lists, at most 8 files, each under 16 MiB
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(report["files"]) and len(files) <= gpu_check.MAX_FILES
    assert all((out / f).stat().st_size < 16 * 1024 * 1024 for f in files)
    assert "[gpu-check] done in" in result.stdout


def test_a_missing_part_is_named_and_a_step_past_its_budget_is_stopped(parts, tmp_path):
    for part in (parts / ".gpu2").iterdir():
        part.unlink()
    out = tmp_path / "out"
    result = _check(out, parts, tmp_path / "work", "--steps", "setup,env,export", "--budget",
                    "env=0.3")  # fmt: skip
    assert result.returncode == 1
    steps = {s["name"]: s for s in json.loads((out / "check.json").read_text())["steps"]}
    assert steps["setup"]["status"] == "failed"
    assert "part(s) 2 of" in steps["setup"]["reason"] and "missing" in steps["setup"]["reason"]
    assert steps["env"]["status"] == "timed-out"  # torch alone takes longer to import
    assert steps["env"]["reason"] == "stopped at its budget of 0 s"
    assert steps["export"]["status"] == "skipped"  # reached after both: it says why (no GPU)
    assert steps["export"]["reason"]


def test_outdir_and_steps_are_checked_before_anything_runs(parts, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.json").write_text("{}")
    result = _check(tmp_path / "full", parts, tmp_path / "work")
    assert result.returncode == 2 and "is not empty (old.json)" in result.stderr
    result = _check(tmp_path / "out", parts, tmp_path / "work", "--steps", "setup,fly")
    assert result.returncode == 2 and "unknown step(s) fly" in result.stderr


def test_a_damaged_part_fails_its_checksum(parts, tmp_path):
    part = next((parts / ".gpu1").glob("*.part-*"))
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF
    part.write_bytes(bytes(data))
    entry = gpu_check.find_archives(parts)["software.tar.gz"]
    with pytest.raises(RuntimeError, match="fail their sha256"):
        gpu_check.reassemble("software.tar.gz", entry, tmp_path)


def test_only_the_wheels_the_host_lacks_are_installed(tmp_path):
    names = [
        "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl",  # always: shadows CPU
        "grpcio-1.81.2-cp312-cp312-manylinux2014_x86_64.whl",  # installed here at 1.81.*
        "protobuf-6.33.6-cp39-abi3-manylinux2014_x86_64.whl",  # here, but not what is asked
        "cnnzoo_not_installed_anywhere-1.0-py3-none-any.whl",  # missing here
        "pytest-9.2.0-py3-none-any.whl",  # here, nothing asked of it
    ]
    wheels = [tmp_path / n for n in names]
    needed = gpu_check.wheels_to_install(
        wheels, {"grpcio": "==1.81.*", "protobuf": ">=99", "onnxruntime-gpu": "==1.31.1"}
    )
    assert [w.name for w in needed] == [names[0], names[2], names[3]]


def test_the_pack_leaves_out_what_the_host_has(tmp_path):
    wanted, requirements = gpu_pack.plan()
    names = {line.split("==")[0] for line in wanted}
    assert {"captum", "grpcio", "grpcio-health-checking", "grpcio-reflection", "tritonclient",
            "prometheus-client", "nvidia-ml-py", "aiohttp", "protobuf"} <= names  # fmt: skip
    assert not names & {"torch", "torchvision", "numpy", "onnx", "onnxruntime", "sympy"}
    assert requirements["grpcio"] == "==1.81.*"
    host = tmp_path / "host.txt"
    host.write_text("aiohttp==3.13.0\ngrpcio==1.70.0\nmatplotlib==3.10.0\n")
    fewer = {line.split("==")[0] for line in gpu_pack.plan(host)[0]}
    assert names - fewer == {"aiohttp", "matplotlib"}  # grpcio 1.70 is not 1.81.*: still packed
