"""Shared helpers for the serving tests: a real `cnnzoo serve` subprocess, images, requests."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DIGITS = sorted((ROOT / "examples" / "digits").glob("*/*.png"))
MODEL = "lenet5-mnist"
TAMPERED = "lenet5-tampered"
QUEUED = "lenet5-queued"  # MODEL with a long max_queue_delay (see conftest.py)
QUEUE_DELAY_S = 0.6


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


def add_version(model_dir: Path, source: int, target: int) -> Path:
    """Copy version `source` of a model to `target`, its manifest updated to match."""
    import json
    import shutil

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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "serving on" in self.log():
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

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
