"""Per-model-version counters, shared by the data plane, the batcher, Prometheus and
ModelStatistics.

Counters are plain integers updated on the server's event-loop thread (no locks on the hot
path); the metrics endpoint and the ModelStatistics RPC read them when asked. Durations are
nanoseconds, as Triton's statistics are; the Prometheus collector converts to microseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cnnzoo.errors import DeadlineExceeded, ModelExecutionError, ResourceExhausted
from cnnzoo.serving.latency import LatencyRecorder

__all__ = [
    "DEADLINE_SLACK_S",
    "FAILURE_REASONS",
    "BatchSizeStats",
    "Duration",
    "ModelStats",
    "failure_reason",
]

# Triton's `reason` label of nv_inference_request_failure.
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
# How long before its deadline a cancelled call still counts as timed out (see failure_reason).
DEADLINE_SLACK_S = 0.05


def failure_reason(err: BaseException, deadline: float | None = None) -> str:
    """Triton's failure category: REJECTED (the request timed out: its deadline passed before
    it was answered; or a bounded queue was full), CANCELED (the caller cancelled it), BACKEND
    (the model failed to run it), OTHER (a malformed request, an unavailable model, ...).

    `deadline` (`time.monotonic()` seconds) tells the two cancellations apart: grpc cancels a
    call whose deadline passed as it cancels one its caller gave up on. The caller's clock
    started before the server received the call, so a client that gives up at its deadline is
    seen here a little before the server's: a cancellation within `DEADLINE_SLACK_S` of the
    deadline is the deadline's.
    """
    if isinstance(err, (DeadlineExceeded, ResourceExhausted)):
        return "REJECTED"
    if isinstance(err, asyncio.CancelledError):
        timed_out = deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK_S
        return "REJECTED" if timed_out else "CANCELED"
    if isinstance(err, ModelExecutionError):
        return "BACKEND"
    return "OTHER"


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
    `execution_count` model executions. `failures` counts failed requests by Triton's
    reason; `latency` (when `--metrics-config` asks for summaries or histograms) records each
    duration as well.
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
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    latency: LatencyRecorder | None = None

    def record_request(self, ok: bool, ns: int, reason: str = "OTHER") -> None:
        """One request answered (`ok`) or failed, for `reason` (see `failure_reason`)."""
        if ok:
            self.success.add(ns)
            if self.latency is not None:
                self.latency.request(ns)
        else:
            self.fail.add(ns)
            self.failures[reason] += 1

    def record_execution(
        self,
        rows: int,
        requests: int,
        queue_ns: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
        queue_each: Sequence[int] = (),
    ) -> None:
        """One model execution of `rows` samples that served `requests` requests (`queue_ns`
        their queue time in total, `queue_each` per request)."""
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
        if self.latency is not None:
            each = queue_each or [queue_ns // max(1, requests)] * requests
            self.latency.execution(each, input_ns, infer_ns, output_ns)
