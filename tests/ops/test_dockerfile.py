"""The Dockerfile: lint-clean, non-root, the project's torch pins, and a context that builds."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tests.ops.stack import (
    DOCKERFILE,
    ROOT,
    context_copies,
    dockerfile_stages,
    dockerignore_patterns,
    hadolint_binary,
    image_entrypoint,
    is_ignored,
)

FINAL_TARGETS = ("cpu", "gpu", "server", "gpu-server")
SERVER_TARGETS = {"server": "server-build", "gpu-server": "gpu-server-build"}


def _instructions(stage: str, name: str) -> list[str]:
    return [args for ins, args in dockerfile_stages()[stage] if ins == name]


def test_hadolint_finds_nothing():
    result = subprocess.run(
        [
            str(hadolint_binary()),
            "--format",
            "json",
            "--failure-threshold",
            "style",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(
        f"line {f['line']}: {f['code']} {f['message']}" for f in findings
    )
    assert result.returncode == 0, result.stderr


def test_cpu_is_the_default_target():
    # `docker build .` builds the last stage
    assert list(dockerfile_stages())[-1] == "cpu"


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_images_run_cnnzoo_as_an_unprivileged_user(target: str):
    [user] = _instructions(target, "USER")[-1:]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{target}: runs as {user}"
    assert image_entrypoint(target) == ["cnnzoo"]
    # only the virtualenv is carried over from the build stage, never the source tree; from the
    # build context only the shipped examples
    built = [c for c in _instructions(target, "COPY") if c.startswith("--from=")]
    assert built and all(c.endswith(" /opt/venv") for c in built)
    assert context_copies(target) == [("examples/", "/opt/cnnzoo/examples/")]
    env = " ".join(_instructions(target, "ENV"))
    assert "CNNZOO_DATA=/data" in env
    assert "PATH=/opt/venv/bin:$PATH" in env
    assert set(" ".join(_instructions(target, "EXPOSE")).split()) == {"8001", "8002"}


def test_nothing_secret_is_baked_in():
    names = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|CREDENTIAL)", re.IGNORECASE)
    for stage, instructions in dockerfile_stages().items():
        for ins, args in instructions:
            if ins in ("ENV", "ARG", "LABEL"):
                assert not names.search(args), f"{stage}: {ins} {args}"


def test_torch_pins_match_the_makefile():
    match = re.search(r"^TORCH_PINS \?= (.+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert match, "Makefile lost TORCH_PINS"
    pins = match.group(1).split()
    for build in ("cpu-build", "gpu-build"):
        runs = " ".join(_instructions(build, "RUN"))
        for pin in pins:
            assert pin in runs, f"{build} does not install {pin}"


@pytest.mark.parametrize("target", sorted(SERVER_TARGETS))
def test_server_images_install_cnnzoo_without_torch(target: str):
    """The server images take the package without its torch extra, and their build fails if
    torch got in anyway (by a dependency)."""
    runs = " ".join(_instructions(SERVER_TARGETS[target], "RUN"))
    assert "pip install" in runs and "/src" in runs
    assert "[torch]" not in runs and "torch==" not in runs
    checks = " ".join(_instructions(target, "RUN"))
    assert "! python -c 'import torch'" in checks


def test_dockerignore_keeps_what_pip_install_reads():
    patterns = dockerignore_patterns()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # the folders the packages are mapped from (`cnnzoo.zoo` lives in zoo/, ...)
    packages = sorted(set(pyproject["tool"]["setuptools"]["package-dir"].values()))
    needed = ["pyproject.toml", pyproject["project"]["readme"], *packages]
    # every tracked file inside a package (shipped weights, cards, labels, stubs) reaches the build
    tracked = subprocess.run(
        ["git", "ls-files", *packages], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert any(path.endswith(".safetensors") for path in tracked)
    for path in needed + tracked:
        assert not is_ignored(path, patterns), f".dockerignore drops {path}, which the build needs"


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_what_the_image_copies_from_the_context_reaches_it(target: str):
    patterns = dockerignore_patterns()
    for source, _ in context_copies(target):
        tracked = subprocess.run(
            ["git", "ls-files", source], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        assert tracked, f"COPY {source}: no tracked file there"
        assert any(path.endswith(".png") for path in tracked)  # the example digits
        for path in tracked:
            assert not is_ignored(path, patterns), f".dockerignore drops {path}, which COPY needs"


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".git/config",
        ".venv/bin/python",
        "data/MNIST/raw/x",
        "model_repository/m",
        "results/job/index.html",
        "jobs/a.toml",
        "zoo/__pycache__/x.pyc",
        "tests/ops/stack.py",
    ],
)
def test_dockerignore_keeps_local_and_private_files_out(path: str):
    assert is_ignored(path, dockerignore_patterns())
