"""Triton's metrics, exactly: names, help texts, types, labels, failure reasons, latency
summaries and histograms, CPU and process metrics; then the monitoring dashboard's every query
run by a real Prometheus (Debian's binary) scraping this module's server.

One server for the module, with Triton's `--metrics-config summary_latencies=true`,
`histogram_latencies=true` and custom quantiles; `lenet5-buckets` is the shipped model with
its histogram buckets set in config.pbtxt (Triton's `model_metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cnnzoo.protos import grpc_service_pb2_grpc
from cnnzoo.serving.stats import DEADLINE_SLACK_S, failure_reason
from tests.ops.monitoring import PROMTOOL_HOW, dashboard_queries, monitoring_config
from tests.serving.checks import wire_name
from tests.serving.helpers import (
    MODEL,
    QUEUED,
    ServerProcess,
    copy_model,
    eventually,
    free_port,
)
from tests.serving.requests import infer_request
from tests.tools import require_tool

BUCKETS = "lenet5-buckets"
BUCKET_BOUNDS = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
X = np.random.default_rng(4).standard_normal((1, 1, 32, 32)).astype(np.float32)
REASONS = {"REJECTED", "CANCELED", "BACKEND", "OTHER"}

# Triton's help text and type of each family (core src/metrics.cc; counters are typed `counter`
# under Triton's names, without a _total suffix, as prometheus-cpp writes them).
TRITON_FAMILIES = {
    "nv_inference_request_success": (
        "Number of successful inference requests, all batch sizes",
        "counter",
    ),
    "nv_inference_request_failure": (
        "Number of failed inference requests, all batch sizes",
        "counter",
    ),
    "nv_inference_count": (
        "Number of inferences performed (does not include cached requests)",
        "counter",
    ),
    "nv_inference_exec_count": (
        "Number of model executions performed (does not include cached requests)",
        "counter",
    ),
    "nv_inference_request_duration_us": (
        "Cumulative inference request duration in microseconds (includes cached requests)",
        "counter",
    ),
    "nv_inference_queue_duration_us": (
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        "counter",
    ),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        "counter",
    ),
    "nv_inference_pending_request_count": (
        "Instantaneous number of pending requests awaiting execution per-model.",
        "gauge",
    ),
    "nv_inference_request_summary_us": (
        "Summary of inference request duration in microseconds (includes cached requests)",
        "summary",
    ),
    "nv_inference_queue_summary_us": (
        "Summary of inference queuing duration in microseconds (includes cached requests)",
        "summary",
    ),
    "nv_inference_compute_infer_summary_us": (
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        "summary",
    ),
    "nv_inference_first_response_histogram_ms": (
        "Duration from request to first response in milliseconds",
        "histogram",
    ),
    "nv_cpu_utilization": ("CPU utilization rate [0.0 - 1.0]", "gauge"),
    "nv_cpu_memory_total_bytes": ("CPU total memory (RAM), in bytes", "gauge"),
    "nv_cpu_memory_used_bytes": ("CPU used memory (RAM), in bytes", "gauge"),
}


def _set_buckets(config) -> None:
    control = config.model_metrics.metric_control.add()
    control.metric_identifier.family = "nv_inference_first_response_histogram_ms"
    control.histogram_options.buckets.extend(BUCKET_BOUNDS)


@pytest.fixture(scope="module")
def metrics_server(repository: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("metrics") / "models"
    for name in (MODEL, QUEUED):
        shutil.copytree(repository / name, repo / name)
    copy_model(repo, MODEL, BUCKETS, edit=_set_buckets)
    process = ServerProcess(
        repo,
        repo.parent / "server.log",
        "--metrics-config", "summary_latencies=true",
        "--metrics-config", "histogram_latencies=true",
        "--metrics-config", "summary_quantiles=0.5:0.05,0.99:0.001",
        "--metrics-interval-ms", "200",
    ).wait_ready()  # fmt: skip
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(scope="module")
def stub(metrics_server: ServerProcess) -> Iterator:
    with grpc.insecure_channel(metrics_server.target) as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def families(server: ServerProcess) -> dict:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def pending(server: ServerProcess, model: str) -> float:
    """The requests waiting in `model`'s queue (Triton's pending-request gauge)."""
    family = families(server)["nv_inference_pending_request_count"]
    return sum(samples(family, model=model).values())


def samples(family, **labels) -> dict[tuple, float]:
    """{(sample name, label items other than model/version): value} of one model's samples."""
    out = {}
    for s in family.samples:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            rest = tuple(
                sorted((k, v) for k, v in s.labels.items() if k not in ("model", "version"))
            )
            out[(wire_name(family, s), rest)] = s.value
    return out


def test_names_help_texts_and_types_are_tritons(metrics_server, stub):
    stub.ModelInfer(infer_request(X), timeout=10)
    found = families(metrics_server)
    for name, (documentation, kind) in TRITON_FAMILIES.items():
        assert name in found, name
        assert (found[name].documentation, found[name].type) == (documentation, kind), name
    for family in ("nv_inference_request_success", "nv_inference_request_summary_us"):
        labels = {tuple(sorted(s.labels)) for s in found[family].samples}
        assert ("model", "version") in labels or ("model", "quantile", "version") in labels
    # prometheus-client's process, platform and GC collectors
    assert found["process_resident_memory_bytes"].samples[0].value > 10e6
    assert found["process_cpu_seconds"].samples[0].value > 0
    assert {"python_info", "python_gc_objects_collected"} <= set(found)
    # no CUDA here: no GPU families at all (they carry gpu_uuid labels where there is one)
    assert not [name for name in found if name.startswith("nv_gpu_")]


def test_counters_are_written_as_triton_writes_them(metrics_server, stub):
    """The text itself: `# TYPE <name> counter` under Triton's names, no `_total` anywhere."""
    stub.ModelInfer(infer_request(X), timeout=10)
    url = f"http://127.0.0.1:{metrics_server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
    ):
        assert f"\n# TYPE {name} counter\n" in text, name
        assert f"{name}_total" not in text, name
        assert f'\n{name}{{model="{MODEL}",version="1"' in text, name


def test_the_default_histogram_resolves_a_sub_millisecond_model(metrics_server, stub):
    """LeNet-5 answers in well under a millisecond of server time; Triton's default buckets
    (100 ms and up) would put every request in the first one."""
    for _ in range(50):
        stub.ModelInfer(infer_request(X), timeout=10)
    family = families(metrics_server)["nv_inference_first_response_histogram_ms"]
    histogram = samples(family, model=MODEL)
    by_bound = {
        float(dict(rest)["le"]): value
        for (name, rest), value in histogram.items()
        if name.endswith("_bucket")
    }
    total = by_bound[float("inf")]
    below_10ms = [bound for bound in by_bound if bound < 10]
    assert len(below_10ms) >= 6, sorted(by_bound)
    # the median falls in a bucket under 10 ms, which Triton's defaults cannot show
    median_bucket = min(bound for bound, count in by_bound.items() if count >= total / 2)
    assert median_bucket < 10, by_bound


def test_failures_are_counted_by_reason(metrics_server, stub):
    before = samples(families(metrics_server)["nv_inference_request_failure"], model=QUEUED)
    assert {dict(rest)["reason"] for _, rest in before} == REASONS
    with pytest.raises(grpc.RpcError) as info:  # OTHER: a malformed request
        stub.ModelInfer(infer_request(np.zeros((1, 1, 28, 28), np.float32), model=QUEUED))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:  # REJECTED: the deadline passes in the queue
        stub.ModelInfer(infer_request(X, model=QUEUED), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    call = stub.ModelInfer.future(infer_request(X, model=QUEUED), timeout=30)
    # CANCELED: the caller gives up while the request is queued
    eventually(
        lambda: pending(metrics_server, QUEUED) >= 1, "the request to be queued", interval=0.02
    )
    assert call.cancel()

    def changes() -> dict[str, float]:
        after = samples(families(metrics_server)["nv_inference_request_failure"], model=QUEUED)
        return {dict(key[1])["reason"]: after[key] - before[key] for key in after}

    eventually(lambda: changes()["CANCELED"], "the cancellation to be counted", timeout=10)
    assert changes() == {"REJECTED": 1, "CANCELED": 1, "BACKEND": 0, "OTHER": 1}


def test_latency_summaries_and_histograms(metrics_server, stub):
    before = families(metrics_server)
    for _ in range(30):
        stub.ModelInfer(infer_request(X, model=BUCKETS), timeout=10)
    after = families(metrics_server)
    for name in (
        "nv_inference_request_summary_us",
        "nv_inference_queue_summary_us",
        "nv_inference_compute_input_summary_us",
        "nv_inference_compute_infer_summary_us",
        "nv_inference_compute_output_summary_us",
    ):
        now = samples(after[name], model=BUCKETS)
        then = samples(before[name], model=BUCKETS)
        assert now[(f"{name}_count", ())] - then.get((f"{name}_count", ()), 0) == 30, name
        quantiles = {dict(rest)["quantile"]: v for (n, rest), v in now.items() if n == name}
        assert set(quantiles) == {"0.5", "0.99"}, name  # --metrics-config summary_quantiles
        assert 0 <= quantiles["0.5"] <= quantiles["0.99"] < 10e6, (name, quantiles)
    # the request summary's sum equals the successful requests' share of the duration counter
    success = samples(after["nv_inference_request_success"], model=BUCKETS)
    summary = samples(after["nv_inference_request_summary_us"], model=BUCKETS)
    assert (
        success[("nv_inference_request_success", ())]
        == summary[("nv_inference_request_summary_us_count", ())]
    )
    histogram = samples(after["nv_inference_first_response_histogram_ms"], model=BUCKETS)
    bounds = [dict(rest)["le"] for (n, rest), _ in histogram.items() if n.endswith("_bucket")]
    assert bounds == [f"{b:g}" for b in BUCKET_BOUNDS] + ["+Inf"]  # config.pbtxt's buckets
    counts = [v for (n, _), v in histogram.items() if n.endswith("_bucket")]
    assert counts == sorted(counts) and counts[-1] == 30
    default = samples(after["nv_inference_first_response_histogram_ms"], model=MODEL)
    assert [dict(r)["le"] for (n, r), _ in default.items() if n.endswith("_bucket")] == [
        "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "25", "50", "100", "250", "500", "1000",
        "2000", "5000", "+Inf",
    ]  # fmt: skip


def test_cpu_metrics_are_sane(metrics_server):
    found = families(metrics_server)
    total = found["nv_cpu_memory_total_bytes"].samples[0].value
    used = found["nv_cpu_memory_used_bytes"].samples[0].value
    meminfo = Path("/proc/meminfo").read_text().split()
    assert total == int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024
    assert 0 < used < total
    assert 0.0 <= found["nv_cpu_utilization"].samples[0].value <= 1.0


@pytest.mark.gpu
def test_gpu_metrics_with_gpu_uuid_labels_when_serving_on_cuda(repository, tmp_path):
    from cnnzoo.serving.runtime import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable CUDA device: {reason}")
    process = ServerProcess(repository, tmp_path / "server.log", "--device", "cuda").wait_ready()
    try:
        found = families(process)
        for name in ("nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes"):
            assert found[name].samples, name
            for sample in found[name].samples:
                assert sample.labels["gpu_uuid"].startswith("GPU-"), sample
        used = found["nv_gpu_memory_used_bytes"].samples[0].value
        assert 0 < used <= found["nv_gpu_memory_total_bytes"].samples[0].value
    finally:
        assert process.stop() == 0, process.log()


# -- the dashboard's queries on a real Prometheus ------------------------------------------------


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _start_prometheus(scrape_target: str, folder: Path) -> tuple[subprocess.Popen, str]:
    """Debian's prometheus on a free port of 127.0.0.1, logging to `folder`/prometheus.log."""
    binary = require_tool("prometheus", PROMTOOL_HOW)
    # The monitoring profile's own configuration, pointed at this server and scraped faster.
    config = yaml.safe_load(monitoring_config()["configs"]["prometheus"]["content"])
    config["global"]["scrape_interval"] = "500ms"
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [scrape_target]}]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    with open(folder / "prometheus.log", "w") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [str(binary), f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address={address}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, f"http://{address}"


def test_every_dashboard_query_returns_data_from_a_real_prometheus(metrics_server, stub, tmp_path):
    process, prometheus = _start_prometheus(f"127.0.0.1:{metrics_server.metrics_port}", tmp_path)
    try:

        def up() -> list:
            with contextlib.suppress(OSError):  # not listening yet
                return _get(f"{prometheus}/api/v1/query?query=up%3D%3D1")["data"]["result"]
            return []

        scraped = eventually(
            up,
            lambda: (
                f"Prometheus to scrape the server:\n{(tmp_path / 'prometheus.log').read_text()}"
            ),
            timeout=30,
            interval=0.2,
        )
        assert scraped, (tmp_path / "prometheus.log").read_text()
        # traffic over several scrapes, so that rate() has points: answers and one failure
        grown = urllib.parse.quote(
            f'changes(nv_inference_request_success{{model="{MODEL}"}}[1m]) >= 2'
        )

        def traffic_scraped() -> list:
            stub.ModelInfer(infer_request(X), timeout=10)
            return _get(f"{prometheus}/api/v1/query?query={grown}")["data"]["result"]

        eventually(traffic_scraped, "Prometheus to see the traffic grow twice", interval=0.01)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(infer_request(X, name="x"), timeout=10)

        def unanswered() -> list:
            """The queries that find no data (yet: Prometheus scrapes every 500 ms)."""
            empty = []
            for title, query in dashboard_queries():
                url = f"{prometheus}/api/v1/query?query={urllib.parse.quote(query)}"
                answer = _get(url)
                assert answer["status"] == "success", (title, query, answer)
                if "nv_gpu_" in query:  # no GPU here: the query runs and finds nothing
                    assert answer["data"]["result"] == [], (title, answer)
                    continue
                # idle models give NaN (0/0, or no observation in the summary's window): a gap
                result = answer["data"]["result"]
                finite = [s for s in result if s["value"][1] not in ("NaN", "+Inf")]
                if not finite:
                    empty.append((title, query, result))
            return empty

        eventually(lambda: not unanswered(), lambda: f"data for {unanswered()}", interval=0.5)
        empty = unanswered()
        assert not empty, empty
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_cancellation_at_the_deadline_is_a_timeout_and_one_well_before_it_the_callers():
    """A client that gives up at its own deadline reaches the server a little before the
    server's copy of that deadline (its clock started first)."""
    now = time.monotonic()
    cancelled = asyncio.CancelledError()
    assert failure_reason(cancelled, now + DEADLINE_SLACK_S / 2) == "REJECTED"
    assert failure_reason(cancelled, now - 1) == "REJECTED"
    assert failure_reason(cancelled, now + 10) == "CANCELED"
    assert failure_reason(cancelled, None) == "CANCELED"
