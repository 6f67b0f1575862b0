"""Prometheus metrics with Triton's names, served on the metrics port at `/metrics`.

The values come from the per-version `ModelStats` counters at scrape time, so the hot path
only adds integers. Triton's counters are named without the `_total` suffix that
prometheus-client requires of its `counter` type; to keep Triton's names exactly (dashboards
query `nv_inference_request_success`), they are exposed untyped. They only ever increase.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from cnnzoo.errors import Unavailable
from cnnzoo.serving.model_manager import ModelManager
from cnnzoo.serving.stats import ModelStats

__all__ = ["MetricsServer", "ServingCollector"]

log = logging.getLogger(__name__)

_COUNTERS: tuple[tuple[str, str, Callable[[ModelStats], float]], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    (
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        lambda s: s.fail.count,
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (a batch of n counts n)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (a batch counts once)",
        lambda s: s.execution_count,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (in the server, queue included)",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (batch assembly)",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (result split)",
        lambda s: s.compute_output.ns // 1000,
    ),
)


class ServingCollector:
    """A prometheus-client collector reading a `ModelManager`'s counters when scraped."""

    def __init__(self, models: ModelManager) -> None:
        self._models = models

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily, Metric

        stats = self._models.all_stats()
        for name, documentation, value in _COUNTERS:
            metric = Metric(name, documentation, "unknown")
            for s in stats:
                metric.add_sample(name, {"model": s.model, "version": s.version}, value(s))
            yield metric

        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per model",
            labels=["model", "version"],
        )
        ready = GaugeMetricFamily(
            "cnnzoo_model_ready", "1 if the model version is serving", labels=["model", "version"]
        )
        provider = GaugeMetricFamily(
            "cnnzoo_model_execution_provider",
            "The ONNX Runtime execution provider a model version runs on (value 1)",
            labels=["model", "version", "provider"],
        )
        for record in self._models.records():
            current = record.current
            if current is None:
                continue
            labels = [record.name, current.version_str]
            queued = current.batcher.queued
            pending.add_metric(labels, queued)
            ready.add_metric(labels, 1)
            provider.add_metric([*labels, current.provider], 1)
        yield pending
        yield ready
        yield provider


class MetricsServer:
    """The `/metrics` HTTP endpoint (prometheus-client's server on its own thread)."""

    def __init__(self, models: ModelManager, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServingCollector(models))
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise Unavailable(f"cannot serve metrics on {host}:{port}: {err.strerror}") from None
        self.port = self._httpd.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
