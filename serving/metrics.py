"""Prometheus metrics with Triton's names, help texts and labels, served at `/metrics`.

The values come from the per-version `ModelStats` counters at scrape time, so the hot path
only adds integers. Triton's counters are named without the `_total` suffix that
prometheus-client requires of its `counter` type; to keep Triton's names exactly (dashboards
query `nv_inference_request_success`), they are exposed untyped. They only ever increase.

Beside the per-model counters: failures by Triton's `reason` (REJECTED: the deadline passed in
the queue, CANCELED: the caller cancelled, BACKEND: the model failed to run, OTHER: everything
else, such as a malformed request), the optional summaries and histogram of
`cnnzoo.serving.latency` (`--metrics-config`), Triton's CPU and GPU metrics
(`cnnzoo.serving.system_metrics`) and prometheus-client's process, platform and GC collectors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from cnnzoo.errors import Unavailable
from cnnzoo.serving.latency import (
    FIRST_RESPONSE_HELP,
    FIRST_RESPONSE_HISTOGRAM,
    SUMMARIES,
    MetricsConfig,
)
from cnnzoo.serving.model_manager import ModelManager
from cnnzoo.serving.stats import FAILURE_REASONS, ModelStats
from cnnzoo.serving.system_metrics import CPU_METRICS, GPU_METRICS, SystemMetrics

__all__ = ["MetricsServer", "ServingCollector"]

log = logging.getLogger(__name__)

Reading = Callable[[ModelStats], float]

# (name, Triton's help text, value); the latency counters go when counter_latencies=false.
_COUNTS: tuple[tuple[str, str, Reading], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        lambda s: s.execution_count,
    ),
)
_LATENCY_COUNTERS: tuple[tuple[str, str, Reading], ...] = (
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (does not include cached "
        "requests)",
        lambda s: s.compute_output.ns // 1000,
    ),
)


class ServingCollector:
    """A prometheus-client collector reading a `ModelManager`'s counters when scraped."""

    def __init__(
        self,
        models: ModelManager,
        config: MetricsConfig | None = None,
        system: SystemMetrics | None = None,
    ) -> None:
        self._models = models
        self._config = config or MetricsConfig()
        self._system = system

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily, Metric

        stats = self._models.all_stats()
        counters = _COUNTS + (_LATENCY_COUNTERS if self._config.counter_latencies else ())
        for name, documentation, value in counters:
            metric = Metric(name, documentation, "unknown")
            for s in stats:
                metric.add_sample(name, _labels(s), value(s))
            yield metric
        failure = Metric(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes",
            "unknown",
        )
        for s in stats:
            for reason in FAILURE_REASONS:
                failure.add_sample(
                    failure.name, {**_labels(s), "reason": reason}, s.failures[reason]
                )
        yield failure
        yield from self._latency(stats)

        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
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
            pending.add_metric(labels, current.batcher.queued)
            ready.add_metric(labels, 1)
            provider.add_metric([*labels, current.provider], 1)
        yield pending
        yield ready
        yield provider
        if self._system is not None:
            yield from self._system_metrics(self._system)

    def _latency(self, stats: list[ModelStats]) -> Iterator[Any]:
        from prometheus_client.core import HistogramMetricFamily, Metric

        recorders = [(s, s.latency) for s in stats if s.latency is not None]
        if self._config.summary_latencies:
            qs = [q for q, _ in self._config.quantiles]
            for name, documentation in SUMMARIES:
                metric = Metric(name, documentation, "summary")
                for s, recorder in recorders:
                    summary = recorder.summaries[name]
                    labels = _labels(s)
                    for q, value in zip(qs, summary.window.quantiles(qs), strict=True):
                        metric.add_sample(name, {**labels, "quantile": f"{q:g}"}, value)
                    metric.add_sample(f"{name}_count", labels, summary.count)
                    metric.add_sample(f"{name}_sum", labels, summary.total)
                yield metric
        if self._config.histogram_latencies:
            histogram = HistogramMetricFamily(
                FIRST_RESPONSE_HISTOGRAM, FIRST_RESPONSE_HELP, labels=["model", "version"]
            )
            for s, recorder in recorders:
                h = recorder.histogram
                if h is not None:
                    histogram.add_metric([s.model, s.version], h.cumulative(), h.total)
            yield histogram

    def _system_metrics(self, system: SystemMetrics) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily, Metric

        cpu = system.cpu
        for name, documentation in CPU_METRICS:
            if name in cpu:
                yield GaugeMetricFamily(name, documentation, value=cpu[name])
        for name, documentation in GPU_METRICS:
            kind = "unknown" if name == "nv_energy_consumption" else "gauge"  # a counter
            metric = Metric(name, documentation, kind)
            for gpu in system.gpus:
                if name in gpu.values:
                    metric.add_sample(name, {"gpu_uuid": gpu.uuid}, gpu.values[name])
            if metric.samples:
                yield metric


def _labels(stats: ModelStats) -> dict[str, str]:
    return {"model": stats.model, "version": stats.version}


class MetricsServer:
    """The `/metrics` HTTP endpoint (prometheus-client's server on its own thread).

    Args:
        models: the served models.
        host: address to listen on.
        port: the port (0: any free one).
        config: Triton's `--metrics-config` latency settings.
        gpu: report GPU metrics (the server runs on CUDA).
        interval_s: how often CPU and GPU figures are sampled (`--metrics-interval-ms`).
    """

    def __init__(
        self,
        models: ModelManager,
        host: str,
        port: int,
        *,
        config: MetricsConfig | None = None,
        gpu: bool = False,
        interval_s: float = 2.0,
    ) -> None:
        from prometheus_client import (
            GCCollector,
            PlatformCollector,
            ProcessCollector,
            start_http_server,
        )
        from prometheus_client.registry import CollectorRegistry

        self.system = SystemMetrics(interval_s, gpu=gpu)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServingCollector(models, config, self.system))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            self.system.close()
            raise Unavailable(f"cannot serve metrics on {host}:{port}: {err.strerror}") from None
        self.port = self._httpd.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.system.close()
