"""The access log: one JSON line per call, never a payload.

```
{"time": "2026-01-02T03:04:05.678Z", "peer": "ipv4:127.0.0.1:51234", "client": "",
 "rpc": "/inference.GRPCInferenceService/ModelInfer", "model": "lenet5-mnist", "version": "",
 "status": "OK", "latency_ms": 0.412}
```

`client` is the common name of the caller's TLS certificate (mutual TLS), else "". Model names
are cut to 200 characters (a caller may send any string). A call only puts a tuple on a bounded
queue; a background thread formats the JSON and writes it, so the event loop never waits for the
disk or spends its time on formatting.

The log never stops the server and never stops for good. When the queue is full (the disk is
slower than the calls) or a write fails (the disk is full, the file was removed), lines are
dropped and counted (`dropped`, the metric `cnnzoo_access_log_dropped_lines_total`) and one
warning says so; the next batch opens the file again (by its path: a rotated or re-created file
is picked up) and, once a write succeeds, an info line says how many were lost. A line cut off by
a failed write is ended before the next one, so every line stays valid JSON. The file is created
readable by its owner and group only (0640, less what the umask takes away); an existing file
readable by everyone loses that permission: the log names clients and their addresses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import stat
import sys
import threading
import time
from pathlib import Path

from cnnzoo.errors import InvalidInput

__all__ = ["AccessLog"]

log = logging.getLogger(__name__)

_NAME_LIMIT = 200
_Line = tuple[float, str, str, str, str, str, str, float]
_MODE = 0o640


class AccessLog:
    """Writes access lines to `path` ("-": standard error) from a background thread.

    Args:
        path: the file (appended to) or "-".
        max_queued: lines waiting to be written; beyond, lines are dropped and counted.

    Raises:
        InvalidInput: the file cannot be opened for appending at start-up.
    """

    def __init__(self, path: str | Path, max_queued: int = 65536) -> None:
        self.path = str(path)
        self.written = 0
        self._full_drops = 0  # counted on the caller's thread
        self._failed_drops = 0  # counted on the writer's
        self._fd: int | None = None
        if self.path != "-":
            try:
                self._fd = self._open()
            except OSError as err:
                raise InvalidInput(
                    f"--access-log: cannot open {self.path}: {err.strerror}"
                ) from None
        self._failing = False
        self._queue: queue.Queue[_Line | None] = queue.Queue(max_queued)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def write(
        self,
        *,
        peer: str,
        client: str,
        rpc: str,
        model: str,
        version: str,
        status: str,
        latency_s: float,
    ) -> None:
        """Queue one line (returns at once; dropped and counted when the queue is full)."""
        try:
            self._queue.put_nowait(
                (time.time(), peer, client, rpc, model, version, status, latency_s)
            )
        except queue.Full:
            self._full_drops += 1

    @property
    def dropped(self) -> int:
        """Lines dropped so far (queue full, or the write failed)."""
        return self._full_drops + self._failed_drops

    def close(self) -> None:
        """Write what is queued, then close the file."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=5)
        self._thread.join(timeout=10)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [] if item is None else [item]
            while not self._queue.empty():  # whatever else is waiting, in one write
                more = self._queue.get_nowait()
                if more is None:
                    item = None
                    break
                batch.append(more)
            if batch:
                try:
                    self._write(batch)
                except Exception:  # never let the writer die: count and go on
                    self._failed_drops += len(batch)
                    log.exception("the access log could not write %d lines", len(batch))
            if item is None and self._stop.is_set():
                return

    def _write(self, batch: list[_Line]) -> None:
        text = "".join(_format(item) for item in batch)
        try:
            if self.path == "-":
                sys.stderr.write(text)
                sys.stderr.flush()
            else:
                data = text.encode()
                if self._fd is None:
                    self._fd = self._open()
                    data = self._end_cut_line() + data
                _write_all(self._fd, data)
        except OSError as err:
            self._failed_drops += len(batch)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None  # opened again for the next batch
            if not self._failing:
                self._failing = True
                log.warning(
                    "the access log cannot write to %s (%s); dropping lines (counted in "
                    "cnnzoo_access_log_dropped_lines_total) and trying again with the next ones",
                    self.path,
                    err.strerror or err,
                )
            return
        self.written += len(batch)
        if self._failing:
            self._failing = False
            log.info(
                "the access log writes to %s again (%d lines dropped so far)",
                self.path,
                self.dropped,
            )

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _MODE)
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_mode & stat.S_IRWXO:
            try:
                os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~stat.S_IRWXO)
            except OSError as err:
                log.warning(
                    "the access log %s is readable by every user and its mode cannot be "
                    "changed (%s); make it 0640 or 0600",
                    self.path,
                    err.strerror,
                )
        return fd

    def _end_cut_line(self) -> bytes:
        """A newline if the file ends in the middle of a line (a write cut short)."""
        try:
            with open(self.path, "rb") as handle:
                if handle.seek(0, os.SEEK_END) and handle.seek(-1, os.SEEK_END) >= 0:
                    return b"" if handle.read(1) == b"\n" else b"\n"
        except OSError:
            pass  # not readable, or not a regular file (a pipe, /dev/...): nothing to end
        return b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _format(item: _Line) -> str:
    when, peer, client, rpc, model, version, status, latency_s = item
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"
    line = {
        "time": stamp,
        "peer": peer,
        "client": client,
        "rpc": rpc,
        "model": model[:_NAME_LIMIT],
        "version": version[:_NAME_LIMIT],
        "status": status,
        "latency_ms": round(latency_s * 1000, 3),
    }
    return json.dumps(line, ensure_ascii=True) + "\n"
