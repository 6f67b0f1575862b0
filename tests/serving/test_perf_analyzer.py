"""Triton's perf_analyzer (its C++ clients, unchanged) against the shared server: unary gRPC,
`--streaming`, `--shared-memory system`, and REST (`-i http`) with binary and JSON tensors.
Short fixed-count runs: they check that the tool works and that the server's statistics count
what it sent, not speed (bench/serving.py measures that)."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from cnnzoo.protos import grpc_service_pb2
from tests.serving.helpers import MODEL
from tests.tools import require_perf_analyzer

REQUESTS = 400


def served(inference) -> int:
    """Requests the shared server has answered successfully for MODEL."""
    request = grpc_service_pb2.ModelStatisticsRequest(name=MODEL)
    (stats,) = inference.ModelStatistics(request).model_stats
    return stats.inference_stats.success.count


def perf_analyzer(tmp_path: Path, inference, url: str, *flags: str) -> dict[str, str]:
    """Run `REQUESTS` requests at concurrency 2; returns its CSV row (asserts a clean run that
    the server counted)."""
    binary = require_perf_analyzer()
    before = served(inference)
    report = tmp_path / "report.csv"
    result = subprocess.run(
        [str(binary), "-m", MODEL, "-u", url, *flags, "--concurrency-range", "2",
         "--request-count", str(REQUESTS), "-f", str(report)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Unable" not in output and "Failed" not in output and "error" not in output, output
    assert served(inference) - before >= REQUESTS  # and a few warm-up requests
    assert "Server:" in output and "Successful request count:" in output, output
    with open(report) as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["Inferences/Second"]) > 0
    return row


@pytest.mark.parametrize(
    "flags",
    [(), ("--streaming",), ("--shared-memory", "system")],
    ids=["unary", "streaming", "shared-memory"],
)
def test_perf_analyzer_grpc(server, inference, tmp_path, flags):
    perf_analyzer(tmp_path, inference, server.target, "-i", "grpc", *flags)


@pytest.mark.parametrize(
    "flags",
    [(), ("--input-tensor-format", "json", "--output-tensor-format", "json")],
    ids=["binary", "json"],
)
def test_perf_analyzer_http(server, inference, tmp_path, flags):
    perf_analyzer(tmp_path, inference, f"127.0.0.1:{server.http_port}", "-i", "http", *flags)
