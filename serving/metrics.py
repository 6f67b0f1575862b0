"""Prometheus metrics with Triton's names, help texts and labels, served at `/metrics`.

The values come from the per-version `ModelStats` counters at scrape time, so the hot path
only adds integers. The page is Prometheus' text format 0.0.4 as Triton writes it
(prometheus-cpp): Triton's counters are typed `counter` under Triton's names, without the
`_total` suffix that prometheus-client's own writer would add (dashboards query
`nv_inference_request_success`), so `text_format` writes the server's families and
prometheus-client's writer only its process, platform and GC collectors.

Beside the per-model counters: failures by Triton's `reason` (REJECTED: the deadline passed in
the queue, CANCELED: the caller cancelled, BACKEND: the model failed to run, OTHER: everything
else, such as a malformed request), the optional summaries and histogram of
`cnnzoo.serving.latency` (`--metrics-config`), Triton's CPU and GPU metrics
(`cnnzoo.serving.system_metrics`), what the server's own bounds did (`extra` collectors: the
access log's dropped lines, REST connections, the call queue, log lines dropped) and
prometheus-client's process, platform and GC collectors.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

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

__all__ = [
    "CONTENT_TYPE",
    "MetricsServer",
    "Reading",
    "ReadingsCollector",
    "ServingCollector",
    "text_format",
]

log = logging.getLogger(__name__)

Reading = Callable[[ModelStats], float]

# Prometheus' text format, as Triton serves it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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
            metric = Metric(name, documentation, "counter")
            for s in stats:
                metric.add_sample(name, _labels(s), value(s))
            yield metric
        failure = Metric(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes",
            "counter",
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
            for served in record.served():
                labels = [record.name, served.version_str]
                pending.add_metric(labels, served.batcher.queued)
                ready.add_metric(labels, 1)
                provider.add_metric([*labels, served.provider], 1)
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
            kind = "counter" if name == "nv_energy_consumption" else "gauge"
            metric = Metric(name, documentation, kind)
            for gpu in system.gpus:
                if name in gpu.values:
                    metric.add_sample(name, {"gpu_uuid": gpu.uuid}, gpu.values[name])
            if metric.samples:
                yield metric


class ReadingsCollector:
    """Unlabelled figures read when scraped: (name, help text, type, read) each."""

    def __init__(self, readings: Iterable[tuple[str, str, str, Callable[[], float]]]) -> None:
        self._readings = list(readings)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import Metric

        for name, documentation, kind, read in self._readings:
            metric = Metric(name, documentation, kind)
            metric.add_sample(name, {}, float(read()))
            yield metric


def _labels(stats: ModelStats) -> dict[str, str]:
    return {"model": stats.model, "version": stats.version}


def text_format(families: Iterable[Any]) -> str:
    """Prometheus' text format 0.0.4 of metric families, names exactly as given (no `_total`
    added to counters, as prometheus-cpp writes them for Triton)."""
    from prometheus_client.utils import floatToGoString

    lines = []
    for family in families:
        help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {family.name} {help_text}\n")
        kind = "untyped" if family.type == "unknown" else family.type
        lines.append(f"# TYPE {family.name} {kind}\n")
        for sample in family.samples:
            labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels.items())
            braces = f"{{{labels}}}" if labels else ""
            value = floatToGoString(sample.value)  # type: ignore[no-untyped-call]
            lines.append(f"{sample.name}{braces} {value}\n")
    return "".join(lines)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Page(BaseHTTPRequestHandler):
    """GET /metrics (gzip when asked for); anything else 404."""

    server: _PageServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self._send(404, b"only /metrics is served here\n", "text/plain; charset=utf-8")
            return
        try:
            body = self.server.render().encode()
        except Exception:
            log.exception("rendering /metrics failed")
            self._send(
                500, b"the metrics could not be read; the server log says why\n", "text/plain"
            )
            return
        self._send(200, body, CONTENT_TYPE)

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
        if gzipped:
            body = gzip.compress(body, compresslevel=1)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # scrapes are not logged (Prometheus scrapes every few seconds)


class _PageServer(ThreadingHTTPServer):
    daemon_threads = True
    render: Callable[[], str]


def _page_server(host: str, port: int) -> _PageServer:
    """The HTTP server for /metrics on `host` (an IPv4 or IPv6 address, or a name)."""
    import socket

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("_PageServerOnFamily", (_PageServer,), {"address_family": family})
    return cast(_PageServer, server_class((host, port), _Page))


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
        from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
        from prometheus_client.registry import CollectorRegistry

        self.system = SystemMetrics(interval_s, gpu=gpu)
        self.collectors: list[Any] = [ServingCollector(models, config, self.system)]
        self.registry = CollectorRegistry(auto_describe=False)  # prometheus-client's own
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        try:
            self._httpd = _page_server(host, port)
        except OSError as err:
            self.system.close()
            raise Unavailable(f"cannot serve metrics on {host}:{port}: {err.strerror}") from None
        self._httpd.render = self.render
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()
        self.port = self._httpd.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def add(self, collector: Any) -> None:
        """Serve another collector's families too (anything with `collect()`)."""
        self.collectors.append(collector)

    def render(self) -> str:
        """The /metrics page."""
        from prometheus_client import generate_latest

        ours = text_format(f for c in self.collectors for f in c.collect())
        return ours + generate_latest(self.registry).decode()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.system.close()
