"""The GPU check: one prepared run of everything cnnzoo does on CUDA, each step on a time budget.

Run through scripts/gpu-check.sh (which picks the interpreter); this file needs only the
standard library until its `setup` step has installed what the host lacks.

Steps, in order (`--steps` picks some; each is skipped, with the reason, where the GPU it needs
is missing, unless `--rehearse`, which runs its CPU stand-in):

- setup (90 s): reassemble the `.gpuN/` parts scripts/gpu-pack.sh made, install the wheels
  the host lacks into `.gpu-check/site`, unpack perf_analyzer and the datasets.
- env (60 s): scripts/gpu_env.py: torch, ONNX Runtime's CUDA provider (a session is made), the
  CUDA/cuDNN libraries loaded, the driver against what the wheels need. Writes check.json's
  `environment` and nvidia-smi.txt.
- export (120 s): tests/gpu/repository.py: lenet5-mnist, resnet20-cifar10 and
  resnet50-imagenet in fp32 and fp16, six exports at once.
- tests (240 s): `pytest -m gpu` over the files holding GPU tests. Writes pytest.txt.
- bench (150 s): bench/gpu.py, the serving figures on the GPU. Writes gpu-serving.json.
- train-speed (100 s): bench/train_speed.py, epoch seconds per CUDA training setting. Writes
  train-speed.json.
- train (the rest): `cnnzoo train resnet20-cifar10 --epochs 164` with the fastest setting,
  stopped (resumable) where the time would run out. Writes train.log, card.json and
  model.safetensors (or train_state.safetensors when stopped).

The whole run has a deadline (`--minutes`, default 12): a step's budget is cut to what is left,
and `train` gets all of it. A step past its budget is stopped (its process group: servers and
workers too) and reported as `timed-out`; a failing step is reported and the next one runs.
OUTDIR gets at most 8 files, each under 16 MiB; check.json says what happened, step by step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# git-ignored: installed wheels, unpacked parts, repositories, runs (`--work` moves it)
DEFAULT_WORK = ROOT / ".gpu-check"
MAX_FILE_BYTES = 16 * 1024 * 1024 - 1
MAX_FILES = 8
TAIL_LINES = 40
EPOCHS = 164  # He et al. 2016's schedule: the successor of the shipped 80-epoch recipe
TRAIN_MODEL = "resnet20-cifar10"
SPEED_REFERENCE = "device_data=0,bf16=0,fused=0"


@dataclass
class Step:
    name: str
    budget_s: float | None  # None: whatever is left
    needs: str | None  # "torch", "ort" (ONNX Runtime's CUDA provider) or None
    run: Callable[[Check, float], Outcome]


@dataclass
class Outcome:
    status: str  # passed | failed | timed-out | skipped
    reason: str = ""
    tail: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class Check:
    """One run of the check: where it writes, what it found, how long it may take."""

    def __init__(
        self,
        out: Path,
        deadline: float,
        rehearse: bool,
        budgets: dict[str, float],
        work: Path = DEFAULT_WORK,
        parts: Path = ROOT,
    ) -> None:
        self.out = out
        self.work = work
        self.parts = parts
        self.deadline = deadline
        self.rehearse = rehearse
        self.budgets = budgets
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.environment: dict[str, Any] = {}
        self.report: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "python": sys.executable,
            "rehearsal": rehearse,
            "steps": [],
            "files": ["check.json"],
        }

    # -- running commands ---------------------------------------------------------------------

    def command(self, argv: list[str], budget: float, log: Path, **env: str) -> Outcome:
        """Run `argv` in its own process group, output to `log`; stop the group at `budget`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            process = subprocess.Popen(
                argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                env={**self.env, **env}, start_new_session=True,
            )  # fmt: skip
            try:
                code = process.wait(timeout=max(budget, 0.1))
            except subprocess.TimeoutExpired:
                _stop_group(process)
                return Outcome("timed-out", f"stopped at its budget of {budget:.0f} s", tail(log))
        if code != 0:
            return Outcome("failed", f"{Path(argv[1]).name if len(argv) > 1 else argv[0]} "
                           f"exited with {code}", tail(log))  # fmt: skip
        return Outcome("passed", "", tail(log))

    def python(self, args: list[str], budget: float, log: Path, **env: str) -> Outcome:
        return self.command([sys.executable, *args], budget, log, **env)

    def keep(self, source: Path, name: str) -> None:
        """Copy `source` into OUTDIR as `name` (within the file count and size limits)."""
        if not source.is_file():
            return
        files = self.report["files"]
        if len(files) >= MAX_FILES:
            self.report.setdefault("left_out", []).append(f"{name} (more than {MAX_FILES} files)")
            return
        size = source.stat().st_size
        if size > MAX_FILE_BYTES:
            data = source.read_bytes()
            (self.out / name).write_bytes(
                b"[... the first %d bytes are left out ...]\n" % (size - MAX_FILE_BYTES + 64)
                + data[-(MAX_FILE_BYTES - 64) :]
            )
        else:
            shutil.copyfile(source, self.out / name)
        files.append(name)

    def report_for(self, name: str) -> dict[str, Any]:
        """The record of step `name` (empty when it has not run)."""
        return next((s for s in self.report["steps"] if s["name"] == name), {})

    def gpu(self, needs: str | None) -> str | None:
        """Why a step that needs `needs` cannot run here (None: it can)."""
        if needs is None or self.rehearse:
            return None
        problems = "; ".join(self.environment.get("problems", [])) or "see the env step"
        if needs == "torch" and not self.environment.get("torch_cuda"):
            return f"no CUDA for PyTorch ({problems})"
        if needs == "ort" and not self.environment.get("ort_cuda"):
            return f"no CUDA for ONNX Runtime ({problems})"
        return None


def _stop_group(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


# -- setup: the packed parts ---------------------------------------------------------------------


def find_archives(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    """The archives `.gpuN/` folders carry: {archive: {"manifest", "parts": {index: path}}}."""
    found: dict[str, dict[str, Any]] = {}
    for folder in sorted(root.glob(".gpu[0-9]*")):
        for manifest_file in folder.glob("*.manifest.json"):
            manifest = json.loads(manifest_file.read_text())
            entry = found.setdefault(manifest["archive"], {"manifest": manifest, "parts": {}})
            for part in folder.glob(f"{manifest['archive']}.part-*"):
                entry["parts"][int(part.name.rsplit("-", 1)[1])] = part
    return found


def reassemble(archive: str, entry: dict[str, Any], into: Path) -> Path:
    """Concatenate the parts in order, check the sha256, unpack; the folder it went into.

    Raises:
        RuntimeError: parts are missing (named) or the whole fails its checksum.
    """
    manifest = entry["manifest"]
    missing = [i for i in range(1, manifest["parts"] + 1) if i not in entry["parts"]]
    if missing:
        raise RuntimeError(
            f"{archive}: part(s) {', '.join(map(str, missing))} of {manifest['parts']} are "
            f"missing (the .gpuN/ folders that scripts/gpu-pack.sh made)"
        )
    target = into / archive.split(".")[0]  # software.tar.gz -> software
    stamp = target / ".sha256"
    if stamp.is_file() and stamp.read_text().strip() == manifest["sha256"]:
        return target  # unpacked by an earlier run
    whole = into / archive
    digest = hashlib.sha256()
    with open(whole, "wb") as out:
        for index in range(1, manifest["parts"] + 1):
            with open(entry["parts"][index], "rb") as part:
                while chunk := part.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != manifest["sha256"]:
        whole.unlink()
        raise RuntimeError(
            f"{archive}: the reassembled parts fail their sha256 (a part is damaged)"
        )
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(whole) as tar:
        if hasattr(tarfile, "data_filter"):  # refuse links and paths out of the folder
            tar.extractall(target, filter="data")
        else:  # pragma: no cover - Pythons before the filter (our own archive)
            tar.extractall(target)
    whole.unlink()
    stamp.write_text(manifest["sha256"])
    return target


def wheels_to_install(wheels: list[Path], requirements: dict[str, str]) -> list[Path]:
    """The wheels this host needs: onnxruntime-gpu always (it must shadow a CPU build), others
    when the host lacks the distribution or has a version outside the project's requirement."""
    from importlib import metadata

    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # no packaging: install whatever is pinned
        SpecifierSet = None  # noqa: N806
    needed = []
    for wheel in wheels:
        name = wheel.name.split("-")[0].replace("_", "-").lower()
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        spec = requirements.get(name)
        outdated = bool(spec) and (SpecifierSet is None or have not in SpecifierSet(spec))
        if name == "onnxruntime-gpu" or have is None or outdated:
            needed.append(wheel)
    return needed


def install(wheels: list[Path], site: Path, budget: float) -> str:
    """Install `wheels` (no dependencies) into `site`; pip if there is one, else unzip."""
    site.mkdir(parents=True, exist_ok=True)
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    if has_pip.returncode == 0:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
             "--no-compile", "--upgrade", "--target", str(site), *map(str, wheels)],
            check=True, timeout=budget, capture_output=True, text=True,
        )  # fmt: skip
        return "pip"
    for wheel in wheels:  # a wheel is a zip of the installed files (purelib/platlib)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    return "unzip"


def step_setup(check: Check, budget: float) -> Outcome:
    archives = find_archives(check.parts)
    site, tools = check.work / "site", check.work / "software" / "tools"
    details: dict[str, Any] = {"archives": sorted(archives)}
    notes = []
    if not archives:
        notes.append("no .gpuN/ parts here: using what the host has installed")
    for archive, entry in archives.items():
        try:
            folder = reassemble(archive, entry, check.work)
        except RuntimeError as err:
            return Outcome("failed", str(err), details=details)
        if archive.startswith("software."):
            manifest = json.loads((folder / "pack.json").read_text())
            here = f"{sys.version_info[0]}.{sys.version_info[1]}"
            if manifest.get("python", here) != here:
                return Outcome(
                    "failed",
                    f"the parts hold wheels for CPython {manifest['python']}, this is Python "
                    f"{here}: run with PYTHON=python{manifest['python']} (or pack for {here})",
                    details=details,
                )
            wheels = sorted((folder / "wheels").glob("*.whl"))
            needed = wheels_to_install(wheels, manifest.get("requirements", {}))
            done = site / ".installed"
            wanted = "\n".join(sorted(w.name for w in needed))
            if needed and not (done.is_file() and done.read_text() == wanted):
                try:
                    how = install(needed, site, budget)
                except subprocess.CalledProcessError as err:
                    return Outcome("failed", f"pip install failed: {err.stderr[-2000:]}")
                done.write_text(wanted)
                notes.append(f"installed {len(needed)} wheel(s) with {how}")
            details["installed"] = [w.name for w in needed]
            details["host_has"] = sorted(w.name for w in wheels if w not in needed)
        if archive.startswith("data."):
            check.env["CNNZOO_DATA"] = str(folder)
            details["data"] = str(folder)
    if (site / ".installed").is_file():
        check.env["PYTHONPATH"] = os.pathsep.join(
            [str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    else:
        check.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    if (tools / "bin" / "perf_analyzer").is_file():
        check.env["PATH"] = f"{tools / 'bin'}{os.pathsep}{check.env.get('PATH', '')}"
        details["perf_analyzer"] = str(tools / "bin" / "perf_analyzer")
    return Outcome("passed", "; ".join(notes), details=details)


# -- the other steps --------------------------------------------------------------------------


def step_env(check: Check, budget: float) -> Outcome:
    report = check.work / "environment.json"
    report.unlink(missing_ok=True)
    outcome = check.python(["scripts/gpu_env.py", "--json", str(report)], budget,
                           check.work / "logs" / "env.log")  # fmt: skip
    if report.is_file():
        check.environment = json.loads(report.read_text())
        check.report["environment"] = check.environment
    smi = shutil.which("nvidia-smi")
    if smi:
        with open(check.work / "nvidia-smi.txt", "w") as handle:
            subprocess.run([smi, "-q"], stdout=handle, stderr=subprocess.STDOUT, timeout=30)
        check.keep(check.work / "nvidia-smi.txt", "nvidia-smi.txt")
    else:
        outcome.details["nvidia-smi"] = "not found on PATH"
    problems = check.environment.get("problems", [])
    if outcome.status == "passed" and problems:
        outcome.reason = "; ".join(problems)
    return outcome


def step_export(check: Check, budget: float) -> Outcome:
    args = ["-m", "tests.gpu.repository", str(check.work / "repository")]
    if check.rehearse:
        args += ["--models", "lenet5-mnist"]
    return check.python(args, budget, check.work / "logs" / "export.log")


def gpu_test_files() -> list[str]:
    """The test files that hold GPU tests (pytest imports no others: fewer collection needs)."""
    found = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if "pytest.mark.gpu" in text:
            found.append(str(path.relative_to(ROOT)))
    return found


def step_tests(check: Check, budget: float) -> Outcome:
    log = check.work / "pytest.txt"
    outcome = check.python(
        ["-m", "pytest", "-m", "gpu", "-rA", "-q", "-p", "no:cacheprovider",
         "--continue-on-collection-errors", *gpu_test_files()],
        budget, log, CNNZOO_GPU_REPOSITORY=str(check.work / "repository"),
    )  # fmt: skip
    check.keep(log, "pytest.txt")
    counts = re.compile(r"\d+ (passed|failed|skipped|errors?|deselected)\b.* in [\d.]+s")
    summary = [line.strip("= ") for line in tail(log, 400) if counts.search(line)]
    if summary:  # pytest's last line: "3 passed, 2 skipped in 12.3s"
        outcome.details["summary"] = summary[-1]
    if outcome.status == "failed" and "passed" in outcome.details.get("summary", ""):
        outcome.reason = outcome.details["summary"]
    return outcome


def step_bench(check: Check, budget: float) -> Outcome:
    results = check.work / "bench"
    shutil.rmtree(results, ignore_errors=True)
    args = ["bench/gpu.py", "--out", str(results)]
    if check.rehearse:
        args += ["--rehearse", "--batches", "1", "--seconds", "0.5"]
    if (check.work / "repository").is_dir():
        args += ["--repository", str(check.work / "repository")]
    outcome = check.python(args, budget, check.work / "logs" / "bench.log")
    for found in sorted(results.glob("gpu-serving_*.json")):
        check.keep(found, "gpu-serving.json")
    return outcome


def step_train_speed(check: Check, budget: float) -> Outcome:
    results = check.work / "train-speed"
    shutil.rmtree(results, ignore_errors=True)
    args = ["bench/train_speed.py", "--out", str(results)]
    if check.rehearse:
        args += ["--rehearse", "--configs", "", SPEED_REFERENCE]
    outcome = check.python(args, budget, check.work / "logs" / "train-speed.log")
    for found in sorted(results.glob("train-speed_*.json")):
        check.keep(found, "train-speed.json")
        measured = json.loads(found.read_text())
        outcome.details["fastest"] = measured.get("fastest")
        outcome.details["steady_epoch_s"] = {
            r["setting"]: r.get("steady_epoch_s") for r in measured.get("rows", [])
        }
    return outcome


def step_train(check: Check, budget: float) -> Outcome:
    """The successor recipe's full run, with the fastest measured setting; stopped (resumable)
    after the epochs the time left allows."""
    speed = check.report_for("train-speed").get("details", {})
    setting = speed.get("fastest") or ""
    seconds = (speed.get("steady_epoch_s") or {}).get(setting)
    out = check.work / "train"
    shutil.rmtree(out, ignore_errors=True)
    args = ["-m", "cnnzoo", "train", TRAIN_MODEL, "--out", str(out), "--no-progress"]
    epochs = EPOCHS
    if check.rehearse:
        args += ["--device", "cpu", "--train-subset", "512", "--test-subset", "256"]
        epochs = 2
    else:
        args += ["--device", "cuda"]
    args += ["--epochs", str(epochs)]
    details: dict[str, Any] = {"setting": setting, "epochs": epochs}
    if seconds:  # leave a margin for start-up, compilation and the final evaluation
        fits = int((budget - 60) / (seconds * 1.1))
        if fits < epochs:
            args += ["--stop-after", str(max(fits, 1))]
            details["stop_after"] = max(fits, 1)
    outcome = check.python(args, budget, check.work / "train.log", CNNZOO_CUDA_TRAINING=setting)
    outcome.details.update(details)
    check.keep(check.work / "train.log", "train.log")
    run = out / TRAIN_MODEL
    if (run / "card.json").is_file():
        card = json.loads((run / "card.json").read_text())
        outcome.details["top1"] = card["metrics"]["top1"]
        outcome.details["wall_time_seconds"] = card["wall_time_seconds"]
        check.keep(run / "card.json", "card.json")
        check.keep(run / "model.safetensors", "model.safetensors")
    elif (run / "train_state.safetensors").is_file():
        check.keep(run / "train_state.safetensors", "train_state.safetensors")
        outcome.reason = (
            f"stopped before epoch {epochs}; continue with `cnnzoo train {TRAIN_MODEL} --device "
            f"cuda --epochs {epochs} --out OUT --resume` from train_state.safetensors in a "
            f"folder OUT/{TRAIN_MODEL}/"
        )
    return outcome


STEPS = (
    Step("setup", 90, None, step_setup),
    Step("env", 60, None, step_env),
    Step("export", 120, "ort", step_export),
    Step("tests", 240, None, step_tests),  # pytest says itself what skips without a GPU
    Step("bench", 150, "ort", step_bench),
    Step("train-speed", 100, "torch", step_train_speed),
    Step("train", None, "torch", step_train),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/gpu-check.sh", description=__doc__.splitlines()[0]
    )
    parser.add_argument("outdir", type=Path, help="where the results go (created)")
    names = [s.name for s in STEPS]
    parser.add_argument(
        "--steps", default=",".join(names), help=f"comma-separated, of {', '.join(names)}"
    )
    parser.add_argument("--minutes", type=float, default=12.0, help="deadline of the whole run")
    parser.add_argument(
        "--budget", action="append", default=[], metavar="STEP=SECONDS",
        help="another budget for a step (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--rehearse", action="store_true", help="run the GPU steps' CPU stand-ins (no GPU needed)"
    )
    parser.add_argument(
        "--parts", type=Path, default=ROOT, help="the folder holding .gpuN/ (default: the checkout)"
    )
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help="working folder (default .gpu-check/)"
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(names)}")
    budgets = {}
    for item in args.budget:
        name, _, value = item.partition("=")
        if name not in names or not value.replace(".", "", 1).isdigit():
            parser.error(f"--budget takes STEP=SECONDS with a step of {', '.join(names)}")
        budgets[name] = float(value)
    args.outdir.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in args.outdir.iterdir()]
    if stale:
        parser.error(f"{args.outdir} is not empty ({', '.join(stale[:4])}): give an empty folder")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    check = Check(
        args.outdir, started + args.minutes * 60, args.rehearse, budgets, args.work, args.parts
    )
    for step in STEPS:
        if step.name not in chosen:
            continue
        left = check.deadline - time.monotonic()
        budget = min(x for x in (budgets.get(step.name, step.budget_s), left) if x is not None)
        record: dict[str, Any] = {"name": step.name, "budget_s": round(budget, 1)}
        why_not = check.gpu(step.needs)
        began = time.monotonic()
        if why_not:
            outcome = Outcome("skipped", why_not)
        elif left < 5:
            outcome = Outcome(
                "skipped", f"{left:.0f} s left before the {args.minutes} min deadline"
            )
        else:
            print(f"[gpu-check] {step.name} (budget {budget:.0f} s) ...", flush=True)
            try:
                outcome = step.run(check, budget)
            except Exception as err:  # a broken step is reported; the next one runs
                outcome = Outcome("failed", f"{type(err).__name__}: {err}")
        record.update(
            status=outcome.status,
            seconds=round(time.monotonic() - began, 1),
            reason=outcome.reason,
            **({"details": outcome.details} if outcome.details else {}),
            **({"tail": outcome.tail} if outcome.tail and outcome.status != "passed" else {}),
        )
        check.report["steps"].append(record)
        print(f"[gpu-check] {step.name}: {outcome.status} in {record['seconds']} s"
              + (f" ({outcome.reason})" if outcome.reason else ""), flush=True)  # fmt: skip
        _write_report(check)
    check.report["seconds"] = round(time.monotonic() - started, 1)
    _write_report(check)
    statuses = [s["status"] for s in check.report["steps"]]
    print(f"[gpu-check] done in {check.report['seconds']} s: "
          + ", ".join(f"{s['name']} {s['status']}" for s in check.report["steps"])
          + f"; results in {args.outdir}", flush=True)  # fmt: skip
    return 1 if any(s in ("failed", "timed-out") for s in statuses) else 0


def _write_report(check: Check) -> None:
    text = json.dumps(check.report, indent=2) + "\n"
    (check.out / "check.json.tmp").write_text(text)
    os.replace(check.out / "check.json.tmp", check.out / "check.json")


if __name__ == "__main__":
    sys.exit(main())
