"""No client can flood the server's log.

Many log lines are caused by clients (a malformed request, a region registered, a model loaded);
a client repeating one could fill the disk or bury everything else. `RateLimitFilter` lets each
kind of line (logger, level and message template, so the same line with other values is the same
kind) through at a steady rate with a burst allowance, and drops the rest; the next line of that
kind to pass says how many were dropped, and `suppressed` counts them all (a metric). Lines at
CRITICAL always pass.

The server puts one filter on each handler of the root logger while it runs
(`install_rate_limit`), so lines of every library (grpc, aiohttp, asyncio) are covered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitFilter", "install_rate_limit"]

_OTHER = ("", 0, "(other kinds)")


class RateLimitFilter(logging.Filter):
    """A token bucket per kind of line: `burst` lines at once, then `per_second`.

    Args:
        burst: lines of one kind let through at once.
        per_second: lines of one kind let through per second after the burst.
        max_kinds: kinds tracked; beyond, the rest share one bucket (a message built from a
            client's values would otherwise make a kind per value).
    """

    def __init__(self, burst: int = 20, per_second: float = 1.0, max_kinds: int = 1024) -> None:
        super().__init__()
        self.burst = burst
        self.per_second = per_second
        self.max_kinds = max_kinds
        self.suppressed = 0
        self._buckets: dict[tuple[str, int, str], list[float]] = {}  # [tokens, time, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        decided = getattr(record, "_rate_limited", None)
        if decided is not None:  # a second handler: the same answer for the same line
            return not decided
        passed = self._admit(record)
        record._rate_limited = not passed
        return passed

    def _admit(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_kinds:
                    key = _OTHER
                    bucket = self._buckets.setdefault(key, [float(self.burst), now, 0])
                else:
                    bucket = self._buckets[key] = [float(self.burst), now, 0]
            tokens = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.per_second)
            bucket[1] = now
            if tokens < 1:
                bucket[0] = tokens
                bucket[2] += 1
                self.suppressed += 1
                return False
            bucket[0] = tokens - 1
            dropped, bucket[2] = int(bucket[2]), 0
        if dropped:
            record.msg = f"{record.getMessage()} [{dropped} more like this were dropped]"
            record.args = None
        return True


def install_rate_limit(limiter: RateLimitFilter) -> Callable[[], None]:
    """Put `limiter` on every handler of the root logger; returns what takes it off again."""
    handlers = [h for h in logging.getLogger().handlers if limiter not in h.filters]
    for handler in handlers:
        handler.addFilter(limiter)

    def uninstall() -> None:
        for handler in handlers:
            handler.removeFilter(limiter)

    return uninstall
