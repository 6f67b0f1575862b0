"""The access log: one JSON line per call, never a payload.

```
{"time": "2026-01-02T03:04:05.678Z", "peer": "ipv4:127.0.0.1:51234", "client": "",
 "rpc": "/inference.GRPCInferenceService/ModelInfer", "model": "lenet5-mnist", "version": "",
 "status": "OK", "latency_ms": 0.412}
```

`client` is the common name of the caller's TLS certificate (mutual TLS), else "". Model names
are cut to 200 characters (a caller may send any string). A call only puts a tuple on a queue;
a background thread formats the JSON and writes it, so the event loop never waits for the disk
or spends its time on formatting. The file is opened for appending.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from cnnzoo.errors import InvalidInput

__all__ = ["AccessLog"]

_NAME_LIMIT = 200
_Line = tuple[float, str, str, str, str, str, str, float]


class AccessLog:
    """Writes access lines to `path` ("-": standard error) from a background thread.

    Raises:
        InvalidInput: the file cannot be opened for appending.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path == "-":
            self._file: TextIO = sys.stderr
        else:
            try:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - close()
            except OSError as err:
                raise InvalidInput(
                    f"--access-log: cannot open {self.path}: {err.strerror}"
                ) from None
        self._queue: queue.SimpleQueue[_Line | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_lines, name="access-log", daemon=True)
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
        """Queue one line (returns at once)."""
        self._queue.put((time.time(), peer, client, rpc, model, version, status, latency_s))

    def close(self) -> None:
        """Write what is queued, then close the file."""
        self._queue.put(None)
        self._thread.join()
        if self._file is not sys.stderr:
            self._file.close()

    def _write_lines(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            lines = [_format(item)]
            while not self._queue.empty():  # whatever else is waiting, in one write
                more = self._queue.get()
                if more is None:
                    self._file.write("".join(lines))
                    self._file.flush()
                    return
                lines.append(_format(more))
            self._file.write("".join(lines))
            self._file.flush()


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
