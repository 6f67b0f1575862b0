"""Shared helpers for the serving tests: a real `cnnzoo serve` subprocess, model repositories,
images, and `eventually` for waiting on what a server does in its own time."""

from __future__ import annotations

import io
import os
import reprlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DIGITS = sorted((ROOT / "examples" / "digits").glob("*/*.png"))
MODEL = "lenet5-mnist"
TAMPERED = "lenet5-tampered"
QUEUED = "lenet5-queued"  # MODEL with a long max_queue_delay (see conftest.py)
QUEUE_DELAY_S = 0.6
# The tests assert status codes and exit codes, so the default message limit of the shared
# server is lowered to keep the oversized-message case cheap.
SHARED_SERVER_MAX_MESSAGE_MB = "4"

T = TypeVar("T")


def eventually(
    condition: Callable[[], T],
    what: str | Callable[[], str],
    *,
    timeout: float = 15,
    interval: float = 0.05,
) -> T:
    """Call `condition` until it returns something true, and return that.

    For what a server does in its own time (a poll, a background writer, a request reaching a
    queue): the verdict comes from what is observed, never from how long a test slept. After
    `timeout` seconds it fails naming `what` (a string, or a function giving one, such as the
    server's log) and the last value. An exception from `condition` fails at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            description = what() if callable(what) else what
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {description} "
                f"(last: {reprlib.repr(value)})"
            )
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cnnzoo(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run the real `cnnzoo` console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "cnnzoo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kwargs,
    )


def without_root_file_access() -> None:
    """In a child process before exec: give up root's right to ignore file permissions.

    Tests make folders unreadable with chmod; root would read them anyway. Dropping
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set makes the exec'd program a
    root whose reads obey the permission bits, like any other user's. (Not root: a no-op.)
    """
    import ctypes

    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for capability in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def export(repository: Path, *extra: str) -> None:
    """`cnnzoo export` of MODEL (the shipped LeNet-5 weights) into `repository`, in process;
    classifiers only: these tests count and serve the repository's classifiers."""
    from cnnzoo.cli import main

    assert main(["export", MODEL, "--repository", str(repository), "--explanations", "none",
                 *extra]) == 0  # fmt: skip


def copy_model(
    root: Path,
    source: str,
    name: str,
    *,
    max_queue_delay_us: int = 0,
    edit: Callable[[Any], None] | None = None,
) -> None:
    """Copy model `source` as `name` with another queue delay and whatever `edit` changes in its
    ModelConfig (its manifest updated to match)."""
    import json

    from google.protobuf import text_format

    from cnnzoo.fileio import sha256_file
    from cnnzoo.protos import model_config_pb2

    shutil.copytree(root / source, root / name)
    config_file = root / name / "config.pbtxt"
    config = text_format.Parse(config_file.read_text(), model_config_pb2.ModelConfig())
    config.name = name
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if edit is not None:
        edit(config)
    config_file.write_text(text_format.MessageToString(config))
    for manifest_file in (root / name).glob("*/manifest.json"):
        manifest = json.loads(manifest_file.read_text())
        manifest["model"] = name
        manifest["files"]["config.pbtxt"] = sha256_file(config_file)
        manifest_file.write_text(json.dumps(manifest, indent=2))


def add_version(model_dir: Path, source: int, target: int) -> Path:
    """Copy version `source` of a model to `target`, its manifest updated to match."""
    import json

    shutil.copytree(model_dir / str(source), model_dir / str(target))
    manifest_file = model_dir / str(target) / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["version"] = target
    manifest["files"] = {
        name.replace(f"{source}/", f"{target}/", 1) if name.startswith(f"{source}/") else name: h
        for name, h in manifest["files"].items()
    }
    manifest_file.write_text(json.dumps(manifest))
    return model_dir / str(target)


def _preexec(restricted_files: bool, max_open_files: int | None):  # noqa: ANN202
    if not restricted_files and max_open_files is None:
        return None

    def before_exec() -> None:
        if restricted_files:
            without_root_file_access()
        if max_open_files is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

    return before_exec


class ServerProcess:
    """`cnnzoo serve` in a subprocess on free ports of 127.0.0.1, logging to a file.

    `restricted_files=True` runs it without root's file-permission override (see
    `without_root_file_access`), so chmod'ed folders are unreadable to it; `max_open_files`
    lowers its limit on open file descriptors (RLIMIT_NOFILE).
    """

    def __init__(
        self,
        repository: Path,
        log_path: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        restricted_files: bool = False,
        max_open_files: int | None = None,
    ) -> None:
        self.port = free_port()
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "cnnzoo", "serve",
                "--repository", str(repository),
                "--port", str(self.port),
                "--http-port", str(self.http_port),
                "--metrics-port", str(self.metrics_port),
                "--intra-op-threads", "1",
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            preexec_fn=_preexec(restricted_files, max_open_files),
        )  # fmt: skip

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 90) -> ServerProcess:
        """Wait for the "serving on" line (printed once the models are loaded)."""

        def ready() -> bool:
            if "serving on" in self.log():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            return False

        eventually(ready, lambda: f"the server to be ready:\n{self.log()}", timeout=timeout)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_label(path: Path) -> str:
    return path.parent.name
