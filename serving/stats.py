"""Per-model-version counters, shared by the data plane, the batcher, Prometheus and
ModelStatistics.

Counters are plain integers updated on the server's event-loop thread (no locks on the hot
path); the metrics endpoint and the ModelStatistics RPC read them when asked. Durations are
nanoseconds, as Triton's statistics are; the Prometheus collector converts to microseconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["BatchSizeStats", "Duration", "ModelStats"]


@dataclass
class Duration:
    """A count of events and their total time."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchSizeStats:
    """Executions of one batch size: input assembly, inference and output split times."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Triton's statistics for one model version.

    `success`/`fail` count requests and their end-to-end time in the server; `queue` and the
    `compute_*` durations are per request (a batch's compute time is charged to each of its
    requests, as Triton does); `inference_count` counts samples (batch rows) and
    `execution_count` model executions.
    """

    model: str
    version: str
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchSizeStats] = field(default_factory=dict)

    def record_request(self, ok: bool, ns: int) -> None:
        (self.success if ok else self.fail).add(ns)

    def record_execution(
        self, rows: int, requests: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One model execution of `rows` samples that served `requests` requests."""
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.queue.add(queue_ns, requests)
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        per_size = self.batches.get(rows)
        if per_size is None:
            per_size = self.batches[rows] = BatchSizeStats()
        per_size.compute_input.add(input_ns)
        per_size.compute_infer.add(infer_ns)
        per_size.compute_output.add(output_ns)
