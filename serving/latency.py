"""Triton's optional latency metrics: summaries with quantiles and the first-response histogram.

Chosen with Triton's `--metrics-config` settings (`MetricsConfig.parse`):

- `summary_latencies=true`: `nv_inference_{request,queue}_summary_us` and
  `nv_inference_compute_{input,infer,output}_summary_us`, quantiles over a sliding window of the
  last 60 s kept in 5 age buckets (prometheus-cpp's defaults, which Triton uses), Triton's default
  quantiles 0.5/0.9/0.95/0.99/0.999 or `summary_quantiles=0.5:0.05,0.99:0.001`;
- `histogram_latencies=true`: `nv_inference_first_response_histogram_ms` (for a model that answers
  once, its request duration), buckets from 0.1 ms to 5 s in 1-2.5-5 steps, which a model's
  config.pbtxt can replace (`model_metrics { metric_control { metric_identifier { family:
  "nv_inference_first_response_histogram_ms" } histogram_options { buckets: [...] } } }`).
  Triton's own defaults (100/500/2000/5000 ms) put every request of a sub-millisecond model
  (LeNet-5 answers in about 0.3 ms) in the first bucket, so no quantile can be read from them;
  these keep Triton's four bounds and add finer ones below;
- `counter_latencies=false` drops the cumulative `*_duration_us` counters.

prometheus-client's own Summary keeps no quantiles, so the window here keeps the observations
themselves: each age bucket holds a uniform sample of at most `capacity` of them (reservoir
sampling), which bounds memory under any load, and the quantiles are computed at scrape time.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cnnzoo.errors import InvalidInput

__all__ = [
    "DEFAULT_BUCKETS_MS",
    "DEFAULT_QUANTILES",
    "FIRST_RESPONSE_HELP",
    "FIRST_RESPONSE_HISTOGRAM",
    "Histogram",
    "LatencyRecorder",
    "MetricsConfig",
    "SUMMARIES",
    "Summary",
    "WindowedQuantiles",
]

FIRST_RESPONSE_HISTOGRAM = "nv_inference_first_response_histogram_ms"
# Triton's 100/500/2000/5000 ms, with bounds down to 0.1 ms for fast models (see the docstring).
DEFAULT_BUCKETS_MS = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0
)  # fmt: skip
# (quantile, allowed error) as Triton's summary_quantiles; the error documents the target.
DEFAULT_QUANTILES = ((0.5, 0.05), (0.9, 0.01), (0.95, 0.001), (0.99, 0.001), (0.999, 0.001))
_BOOLEAN_SETTINGS = ("counter_latencies", "histogram_latencies", "summary_latencies")


@dataclass(frozen=True)
class MetricsConfig:
    """The `--metrics-config` settings Triton has for per-model latency metrics."""

    counter_latencies: bool = True
    histogram_latencies: bool = False
    summary_latencies: bool = False
    quantiles: tuple[tuple[float, float], ...] = DEFAULT_QUANTILES

    @classmethod
    def parse(cls, settings: Sequence[str]) -> MetricsConfig:
        """From `key=value` strings (repeatable `--metrics-config`).

        Raises:
            InvalidInput: an unknown key, a value that is not true/false, or bad quantiles.
        """
        values: dict[str, object] = {}
        for setting in settings:
            key, sep, value = setting.partition("=")
            key, value = key.strip(), value.strip()
            if not sep:
                raise InvalidInput(f"--metrics-config takes key=value, got {setting!r}")
            if key in _BOOLEAN_SETTINGS:
                if value not in ("true", "false"):
                    raise InvalidInput(
                        f"--metrics-config {key} must be true or false, got {value!r}"
                    )
                values[key] = value == "true"
            elif key == "summary_quantiles":
                values["quantiles"] = _parse_quantiles(value)
            else:
                known = ", ".join((*_BOOLEAN_SETTINGS, "summary_quantiles"))
                raise InvalidInput(f"unknown --metrics-config setting {key!r} (settings: {known})")
        return cls(**values)  # type: ignore[arg-type]


def _parse_quantiles(text: str) -> tuple[tuple[float, float], ...]:
    """`0.5:0.05,0.9:0.01` (commas or spaces between pairs, as Triton accepts)."""
    pairs = []
    for item in text.replace(",", " ").split():
        quantile, sep, error = item.partition(":")
        try:
            q, e = float(quantile), float(error)
        except ValueError:
            q = e = math.nan
        if not sep or not 0 < q < 1 or not 0 <= e < 1:
            raise InvalidInput(
                f"--metrics-config summary_quantiles takes quantile:error pairs such as "
                f"0.5:0.05,0.99:0.001 (0 < quantile < 1), got {item!r}"
            )
        pairs.append((q, e))
    if not pairs:
        raise InvalidInput("--metrics-config summary_quantiles names no quantile")
    return tuple(sorted(pairs))


class WindowedQuantiles:
    """Quantiles of the observations of the last `max_age_s` seconds.

    The window is `age_buckets` buckets of `max_age_s / age_buckets` seconds; a query reads the
    buckets younger than `max_age_s`. Thread-safe: observed on the event loop, read by the
    metrics thread.
    """

    def __init__(self, max_age_s: float = 60.0, age_buckets: int = 5, capacity: int = 2048) -> None:
        self._span = max_age_s / age_buckets
        self._count = age_buckets
        self._capacity = capacity
        self._buckets: list[tuple[int, list[float], list[int]]] = []  # (slot, sample, [seen])
        self._lock = threading.Lock()
        self._random = random.Random(0)

    def observe(self, value: float, now: float | None = None) -> None:
        slot = int((time.monotonic() if now is None else now) // self._span)
        with self._lock:
            if not self._buckets or self._buckets[-1][0] != slot:
                self._buckets.append((slot, [], [0]))
                del self._buckets[: -self._count]
            _, sample, seen = self._buckets[-1]
            seen[0] += 1
            if len(sample) < self._capacity:
                sample.append(value)
            else:  # reservoir sampling: every observation of the bucket equally likely kept
                index = self._random.randrange(seen[0])
                if index < self._capacity:
                    sample[index] = value

    def quantiles(self, qs: Sequence[float], now: float | None = None) -> list[float]:
        """The value at each quantile (NaN without observations in the window, as Prometheus'
        client libraries report)."""
        oldest = int((time.monotonic() if now is None else now) // self._span) - self._count + 1
        with self._lock:
            weighted = [
                (np.asarray(sample), seen[0] / len(sample))
                for slot, sample, seen in self._buckets
                if slot >= oldest and sample
            ]
        if not weighted:
            return [math.nan] * len(qs)
        values = np.concatenate([v for v, _ in weighted])
        weights = np.concatenate([np.full(len(v), w) for v, w in weighted])
        order = np.argsort(values, kind="stable")
        values, cumulative = values[order], np.cumsum(weights[order])
        total = cumulative[-1]
        return [
            float(values[min(np.searchsorted(cumulative, q * total), len(values) - 1)]) for q in qs
        ]


@dataclass
class Summary:
    """A Prometheus summary: cumulative count and sum, windowed quantiles."""

    count: int = 0
    total: float = 0.0
    window: WindowedQuantiles = field(default_factory=WindowedQuantiles)

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.window.observe(value)


class Histogram:
    """A Prometheus histogram with fixed upper bounds (the +Inf bucket is implied)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(float(b) for b in bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(`le` label, cumulative count) per bucket, +Inf last."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == math.inf else f"{bound:g}", running))
        return out


# Summary name and Triton's help text for it (microseconds), in Triton's order.
SUMMARIES = (
    (
        "nv_inference_request_summary_us",
        "Summary of inference request duration in microseconds (includes cached requests)",
    ),
    (
        "nv_inference_queue_summary_us",
        "Summary of inference queuing duration in microseconds (includes cached requests)",
    ),
    (
        "nv_inference_compute_input_summary_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
    ),
    (
        "nv_inference_compute_infer_summary_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
    ),
    (
        "nv_inference_compute_output_summary_us",
        "Cumulative inference compute output duration in microseconds (does not include cached "
        "requests)",
    ),
)
FIRST_RESPONSE_HELP = "Duration from request to first response in milliseconds"


class LatencyRecorder:
    """The optional latency metrics of one model version (see the module doc)."""

    def __init__(self, config: MetricsConfig, buckets_ms: Sequence[float] | None = None) -> None:
        self.config = config
        self.summaries = (
            {name: Summary() for name, _ in SUMMARIES} if config.summary_latencies else {}
        )
        self.histogram = (
            Histogram(buckets_ms or DEFAULT_BUCKETS_MS) if config.histogram_latencies else None
        )

    def request(self, ns: int) -> None:
        """A successful request took `ns` in the server."""
        if self.summaries:
            self.summaries["nv_inference_request_summary_us"].observe(ns / 1e3)
        if self.histogram is not None:
            self.histogram.observe(ns / 1e6)

    def execution(
        self, queue_ns: Sequence[int], input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One execution: each request's queue time, the batch's compute times (charged to
        every request of the batch, as Triton does)."""
        if not self.summaries:
            return
        queue = self.summaries["nv_inference_queue_summary_us"]
        for ns in queue_ns:
            queue.observe(ns / 1e3)
        for name, ns in (
            ("nv_inference_compute_input_summary_us", input_ns),
            ("nv_inference_compute_infer_summary_us", infer_ns),
            ("nv_inference_compute_output_summary_us", output_ns),
        ):
            summary = self.summaries[name]
            for _ in queue_ns:
                summary.observe(ns / 1e3)
