"""Faults of the machine rather than of a request: a full disk under the access log, a /proc read
that fails once, a repository the server may not read. Each is survived, said once, and ends
when the fault does."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time

import grpc
import numpy as np

from cnnzoo.protos import grpc_service_pb2_grpc
from cnnzoo.serving.access_log import AccessLog
from cnnzoo.serving.system_metrics import SystemMetrics
from tests.serving.checks import scrape
from tests.serving.helpers import MODEL, ServerProcess, cnnzoo, without_root_file_access
from tests.serving.requests import infer_request

X = np.zeros((1, 1, 32, 32), np.float32)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_access_log_survives_a_full_disk_and_resumes(repository, tmp_path):
    """The access log's path leads to /dev/full (every write fails with ENOSPC), then to a real
    file again: calls are answered throughout, the lost lines are counted, one warning says
    so, and lines are written again once the disk takes them."""
    link = tmp_path / "access.jsonl"
    link.symlink_to("/dev/full")
    log = tmp_path / "server.log"
    server = ServerProcess(repository, log, "--model", MODEL, "--access-log", str(link))
    server.wait_ready()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(20):
                stub.ModelInfer(infer_request(X), timeout=10)
            dropped = ("cnnzoo_access_log_dropped_lines_total", "")
            wait_for(lambda: scrape(server)[dropped] >= 20)
            # The disk has room again.
            real = tmp_path / "after.jsonl"
            link.unlink()
            link.symlink_to(real)
            for _ in range(5):
                stub.ModelInfer(infer_request(X), timeout=10)
            wait_for(lambda: real.exists() and len(real.read_text().splitlines()) >= 5)
    finally:
        assert server.stop() == 0, server.log()
    lines = [json.loads(line) for line in real.read_text().splitlines()]
    assert {line["rpc"] for line in lines} == {"/inference.GRPCInferenceService/ModelInfer"}
    text = server.log()
    assert text.count("the access log cannot write to") == 1, text
    assert "the access log writes to" in text and "again" in text, text
    assert "Traceback" not in text, text


def test_the_access_log_is_not_readable_by_every_user(tmp_path):
    old_umask = os.umask(0o022)
    try:
        created = AccessLog(tmp_path / "new.jsonl")
        created.close()
        assert stat.S_IMODE(os.stat(tmp_path / "new.jsonl").st_mode) == 0o640
        existing = tmp_path / "existing.jsonl"
        existing.write_text("")
        existing.chmod(0o644)
        AccessLog(existing).close()
        assert stat.S_IMODE(existing.stat().st_mode) == 0o640
    finally:
        os.umask(old_umask)


def test_a_line_cut_by_a_failed_write_is_ended_before_the_next(tmp_path):
    link, real = tmp_path / "access.jsonl", tmp_path / "real.jsonl"
    link.symlink_to("/dev/full")
    log = AccessLog(link)
    line = {"peer": "p", "client": "", "model": "m", "version": "", "status": "OK"}
    log.write(rpc="lost", latency_s=0.001, **line)
    wait_for(lambda: log.dropped == 1)
    real.write_text('{"time": "cut sho')  # what a disk that filled mid-line leaves behind
    link.unlink()
    link.symlink_to(real)
    log.write(rpc="kept", latency_s=0.001, **line)
    log.close()
    first, second = real.read_text().splitlines()
    assert first == '{"time": "cut sho'
    assert json.loads(second)["rpc"] == "kept"


def test_a_proc_read_error_costs_one_sample_not_the_cpu_metrics(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    for name in ("stat", "meminfo"):
        shutil.copy(f"/proc/{name}", proc / name)
    metrics = SystemMetrics(0.05, proc=proc)
    try:
        wait_for(lambda: "nv_cpu_memory_total_bytes" in metrics.cpu)
        (proc / "stat").rename(proc / "stat.away")  # a transient failure
        wait_for(lambda: metrics.cpu_read_errors > 0)
        (proc / "stat.away").rename(proc / "stat")
        wait_for(lambda: "nv_cpu_utilization" in metrics.cpu)
        assert metrics.cpu["nv_cpu_memory_total_bytes"] > 0
    finally:
        metrics.close()


def test_an_unreadable_repository_is_one_clear_error(repository, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(repository / MODEL, root / MODEL)
    root.chmod(0)
    try:
        done = cnnzoo(
            "serve", "--repository", str(root), "--port", "0", "--http-port", "-1",
            "--metrics-port", "-1", preexec_fn=without_root_file_access,
        )  # fmt: skip
    finally:
        root.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"cannot read the model repository {root}: Permission denied" in line


def test_a_repository_that_becomes_unreadable_is_reported_by_the_poll(repository, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(repository / MODEL, root / MODEL)
    server = ServerProcess(
        root, tmp_path / "server.log", "--poll-seconds", "0.2", restricted_files=True
    ).wait_ready()
    try:
        root.chmod(0)
        wait_for(lambda: "repository poll failed: cannot read the model repository" in server.log())
        root.chmod(0o755)
        with grpc.insecure_channel(server.target) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(infer_request(X), timeout=10)  # the loaded model served throughout
    finally:
        root.chmod(0o755)
        assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()
