"""Assertions the end-to-end serving tests share: a status and message, the server still serving."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.requests import infer_request, logits_of

SAMPLE = np.random.default_rng(7).standard_normal((3, 1, 32, 32)).astype(np.float32)


def reference_logits(onnx_reference, x: np.ndarray) -> np.ndarray:
    return onnx_reference.run(["logits"], {"input": x})[0]


def assert_status(call, code: grpc.StatusCode, *fragments: str) -> str:
    """`call()` fails with `code`, a message holding each fragment and no traceback."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    details = info.value.details()
    assert info.value.code() == code, f"{info.value.code()}: {details}"
    for fragment in fragments:
        assert fragment in details, details
    assert "Traceback" not in details
    return details


def assert_still_serving(inference, onnx_reference) -> None:
    response = inference.ModelInfer(infer_request(SAMPLE[:1]), timeout=10)
    np.testing.assert_array_equal(logits_of(response), reference_logits(onnx_reference, SAMPLE[:1]))


def wire_name(family, sample) -> str:
    """A sample's name as the server wrote it: prometheus-client's parser adds `_total` to
    the samples of a counter, and Triton's counters (`nv_*`) are written without it (the
    server's own, `cnnzoo_*_total`, with it)."""
    if (
        family.type == "counter"
        and family.name.startswith("nv_")
        and sample.name == family.name + "_total"
    ):
        return family.name
    return sample.name


def scrape(server) -> dict[tuple[str, str], float]:
    """`/metrics` parsed with prometheus-client's own parser: {(sample name, model): value},
    summed over the other labels (a failure count is per reason)."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (wire_name(family, sample), sample.labels.get("model", ""))
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples
