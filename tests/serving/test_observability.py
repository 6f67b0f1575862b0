"""Prometheus metrics (Triton's names), ModelStatistics, and dynamic batching seen from outside."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cnnzoo.protos import grpc_service_pb2
from tests.serving.checks import scrape
from tests.serving.helpers import MODEL, QUEUED
from tests.serving.requests import infer_request

X = np.random.default_rng(3).standard_normal((2, 1, 32, 32)).astype(np.float32)


def delta(before, after, name: str, model: str = MODEL) -> float:
    return after[(name, model)] - before[(name, model)]


def test_metrics_count_requests_inferences_and_time(server, inference):
    before = scrape(server)
    for _ in range(10):
        inference.ModelInfer(infer_request(X))  # one after another: one execution each
    for _ in range(2):
        try:
            inference.ModelInfer(infer_request(np.zeros((1, 1, 28, 28), np.float32)))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(server)
    assert delta(before, after, "nv_inference_request_success") == 10
    assert delta(before, after, "nv_inference_request_failure") == 2
    assert delta(before, after, "nv_inference_count") == 20
    assert delta(before, after, "nv_inference_exec_count") == 10
    for name in (
        "nv_inference_request_duration_us",
        "nv_inference_compute_infer_duration_us",
    ):
        assert delta(before, after, name) > 0, name
    for name in ("nv_inference_queue_duration_us", "nv_inference_compute_output_duration_us"):
        assert delta(before, after, name) >= 0, name
    assert after[("nv_inference_pending_request_count", MODEL)] == 0
    assert after[("cnnzoo_model_ready", MODEL)] == 1
    assert after[("cnnzoo_model_execution_provider", MODEL)] == 1


@pytest.mark.parametrize("name", [MODEL, QUEUED])
def test_concurrent_requests_are_counted_per_execution(server, inference, name):
    """128 concurrent requests: every answer right, and the metrics and statistics agree on how
    they were executed. grpc.aio starts about one handler per pass of the event loop, so for
    LeNet-5 (run on the loop itself, faster than that pass) most run alone; with a queue delay
    (lenet5-queued) they must share batches."""
    before = scrape(server)
    stats_before = inference.ModelStatistics(grpc_service_pb2.ModelStatisticsRequest(name=name))
    request = infer_request(X[:1], model=name)
    futures = [inference.ModelInfer.future(request) for _ in range(128)]
    expected = futures[0].result()
    for future in futures:
        assert future.result().raw_output_contents == expected.raw_output_contents
    after = scrape(server)
    assert delta(before, after, "nv_inference_request_success", name) == 128
    assert delta(before, after, "nv_inference_count", name) == 128
    executions = delta(before, after, "nv_inference_exec_count", name)
    assert 1 <= executions <= 128
    if name == QUEUED:
        assert executions < 128, f"{executions} executions for 128 concurrent requests"

    stats = inference.ModelStatistics(grpc_service_pb2.ModelStatisticsRequest(name=name))
    (model,) = stats.model_stats
    (model_before,) = stats_before.model_stats
    assert model.name == name and model.version == "1"
    assert model.inference_count - model_before.inference_count == 128
    assert model.execution_count - model_before.execution_count == executions
    if name == QUEUED:
        assert max(b.batch_size for b in model.batch_stats) > 1
    assert sum(b.compute_infer.count * b.batch_size for b in model.batch_stats) == (
        model.inference_count
    )
    assert model.inference_stats.success.count >= 128 and model.last_inference > 0
