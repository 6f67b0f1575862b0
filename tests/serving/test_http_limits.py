"""The REST port under hostile clients: too many connections, slow and idle ones, every kind of
bad body, a client flooding the log. One server with small limits and only 256 file descriptors
(so that connections beyond the limit would exhaust them); raw sockets play the clients, since
a well-behaved HTTP library cannot misbehave this way."""

from __future__ import annotations

import gzip
import json
import re
import resource
import socket
import time
import urllib.request
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from cnnzoo.protos import grpc_service_pb2_grpc
from tests.serving.checks import SAMPLE, assert_still_serving, reference_logits
from tests.serving.helpers import MODEL, ServerProcess
from tests.serving.requests import infer_request, logits_of

MAX_CONNECTIONS, HEADER_S, BODY_S, IDLE_S = 40, 1.0, 1.0, 2.0
MAX_BODY = 1024 * 1024  # --max-message-mb 1
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("http-limits") / "server.log"
    process = ServerProcess(
        repository,
        log,
        "--model", MODEL,
        "--max-message-mb", "1",
        "--http-max-connections", str(MAX_CONNECTIONS),
        "--http-header-timeout", str(HEADER_S),
        "--http-body-timeout", str(BODY_S),
        "--http-idle-timeout", str(IDLE_S),
        max_open_files=256,
    ).wait_ready()  # fmt: skip
    yield process
    assert process.stop() == 0, process.log()
    log_text = process.log()
    assert "Traceback" not in log_text, log_text
    assert " ERROR " not in log_text, log_text


@pytest.fixture(scope="module")
def inference(server):
    import grpc

    with grpc.insecure_channel(server.target) as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=10)


def read_answer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def status_and_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    try:
        return status, json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        return status, body.decode(errors="replace")


def post(server, body: bytes, headers: str = "", path: str = INFER) -> tuple[int, str]:
    with connect(server) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        head += f"Content-Length: {len(body)}\r\n{headers}\r\n"
        sock.sendall(head.encode() + body)
        return status_and_error(read_answer(sock))


def metric(server, name: str) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_connections_beyond_the_limit_are_refused_and_grpc_keeps_serving(
    server, inference, onnx_reference
):
    """600 idle connections against a server with 256 file descriptors: the REST port holds
    MAX_CONNECTIONS and answers the rest 503 at once, so gRPC can still take connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    sockets = []
    try:
        for _ in range(600):
            sockets.append(connect(server))
        time.sleep(0.5)
        seen = {"held": 0, "closed": 0, "refused": 0}
        for sock in sockets:
            sock.settimeout(0.01)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                seen["held"] += 1  # held open by the server
                continue
            if not data:
                seen["closed"] += 1  # held, then closed idle (--http-idle-timeout)
                continue
            status, error = status_and_error(data)
            assert status == 503 and "--http-max-connections" in error, data
            seen["refused"] += 1
        assert seen["held"] <= MAX_CONNECTIONS, seen
        assert seen["refused"] >= 600 - MAX_CONNECTIONS - seen["closed"], seen
        assert metric(server, "cnnzoo_http_connections") <= MAX_CONNECTIONS
        assert metric(server, "cnnzoo_http_connections_refused_total") >= seen["refused"]
        # A new gRPC connection and call while the REST port is full.
        import grpc

        with grpc.insecure_channel(server.target) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            response = stub.ModelInfer(infer_request(SAMPLE[:1]), timeout=10)
        np.testing.assert_array_equal(
            logits_of(response), reference_logits(onnx_reference, SAMPLE[:1])
        )
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(0.5)
    status, _ = post(server, b'{"inputs": []}')
    assert status == 400  # REST answers again once connections are free


def test_a_slow_request_head_is_cut_off(server):
    """Slowloris: a header line a byte at a time, never finished."""
    with connect(server) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: t\r\n".encode())
        started = time.monotonic()
        answer = b""
        sock.settimeout(0.2)
        for byte in b"X-Slow: " + b"a" * 100:
            try:
                sock.send(bytes([byte]))
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if answer:
                break
        elapsed = time.monotonic() - started
    status, error = status_and_error(answer or b"")
    assert status == 408 and "--http-header-timeout" in error, (answer, elapsed)
    assert elapsed < IDLE_S * 3, elapsed  # not held until some other limit


def test_an_idle_connection_is_closed(server):
    with connect(server) as sock:
        assert read_answer(sock, timeout=IDLE_S * 5) == b""  # closed, nothing said


def test_a_body_that_stops_coming_is_answered_408(server):
    with connect(server) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: t\r\nContent-Length: 4096\r\n\r\n".encode()
            + b'{"inputs": '
        )
        started = time.monotonic()
        status, error = status_and_error(read_answer(sock))
        closed_after = time.monotonic() - started
    assert status == 408 and "--http-body-timeout" in error
    # then the connection is closed: the stalled body is waited for no longer than its timeout
    assert closed_after < 5 * BODY_S


def brotli_or_none():
    try:
        import brotli
    except ImportError:
        return None
    return brotli


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


GOOD = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32],
                 "data": [0.0] * 1024}]}
).encode()  # fmt: skip


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b"not gzip", "Content-Encoding: gzip\r\n", 400, "not valid gzip"),
        (b"not deflate", "Content-Encoding: deflate\r\n", 400, "not valid deflate"),
        (gzip.compress(GOOD)[:-12], "Content-Encoding: gzip\r\n", 400, "ends before"),
        (gzip.compress(GOOD) + b"junk", "Content-Encoding: gzip\r\n", 400, "data follows"),
        (b"x", "Content-Encoding: zstd\r\n", 415, "'zstd' is not supported"),
        (b"x", "Content-Encoding: snappy\r\n", 415, "'snappy' is not supported"),
        (gzip.compress(GOOD), "Content-Encoding: gzip, gzip, gzip\r\n", 415, "at most 2"),
        (gzip.compress(bytes(8 * MAX_BODY)), "Content-Encoding: gzip\r\n", 413, "limit"),
        (b'{"inputs": [' + deep_json(100_000) + b"]}", "", 400, "nested too deeply"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "", 400, "nested too deeply"),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [1, 1, 32, 32],
                            "data": [0.0] * 1024,
                            "parameters": {"binary_data_size": 4096},
                        }
                    ]
                }
            ).encode()
            + bytes(4096),  # fmt: skip
            "Inference-Header-Content-Length: {header}\r\n",
            400,
            "both 'data' and the binary_data_size",
        ),
    ],
    ids=[
        "gzip-garbage",
        "deflate-garbage",
        "gzip-truncated",
        "gzip-trailing",
        "zstd",
        "unknown-coding",
        "three-codings",
        "gzip-bomb",
        "deep-array",
        "deep-object",
        "data-and-binary",
    ],
)
def test_bad_bodies_are_answered_with_their_status(server, body, headers, status, fragment):
    if "{header}" in headers:
        headers = headers.format(header=len(body) - 4096)
    code, error = post(server, body, headers)
    assert (code, fragment in error) == (status, True), error


def test_gzip_and_brotli_bodies_are_decoded(server):
    assert post(server, gzip.compress(GOOD), "Content-Encoding: gzip\r\n")[0] == 200
    assert post(server, zlib.compress(GOOD), "Content-Encoding: deflate\r\n")[0] == 200
    brotli = brotli_or_none()
    if brotli is not None:
        assert post(server, brotli.compress(GOOD), "Content-Encoding: br\r\n")[0] == 200
        assert post(server, b"not br", "Content-Encoding: br\r\n")[0] == 400
    else:
        assert post(server, b"x", "Content-Encoding: br\r\n")[0] == 415


def test_bad_chunking_and_a_client_leaving_mid_body_leave_the_server_serving(
    server, inference, onnx_reference
):
    with connect(server) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"ZZZ\r\nabc\r\n0\r\n\r\n"
        )
        assert status_and_error(read_answer(sock))[0] == 400
    for _ in range(20):  # leave mid-body, again and again
        with connect(server) as sock:
            sock.sendall(
                f"POST {INFER} HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n".encode()
                + b"{" * 1000
            )
    assert post(server, GOOD)[0] == 200
    assert_still_serving(inference, onnx_reference)


def test_no_client_floods_the_log(server):
    """Registering and unregistering a region logs a line each; 300 of them in a row leave at
    most the burst and the steady rate in the log, and the rest are counted."""
    path = "/dev/shm/cnnzoo_flood"
    with open(path, "wb") as handle:
        handle.write(bytes(64))
    started = time.monotonic()
    try:
        for i in range(300):
            status, _ = post(
                server,
                json.dumps({"key": "/cnnzoo_flood", "offset": 0, "byte_size": 64}).encode(),
                path=f"/v2/systemsharedmemory/region/flood{i}/register",
            )
            assert status == 200
            assert (
                post(server, b"", path=f"/v2/systemsharedmemory/region/flood{i}/unregister")[0]
                == 200
            )
    finally:
        import os

        os.unlink(path)
    elapsed = time.monotonic() - started
    lines = server.log().count(": registered shared-memory region flood")
    assert lines <= 20 + elapsed + 2, (lines, elapsed)  # burst 20, then 1 a second
    assert metric(server, "cnnzoo_log_lines_dropped_total") >= 300 - lines
