"""Connection, concurrency and queue limits as a client meets them: calls in progress on the
server (more wait their turn, up to a bound), a model's queue, streams per connection, idle
connections closed. One server with small limits;
`lenet5-queued` holds each request `QUEUE_DELAY_S` for its batch to fill, so calls stay in
progress long enough to collide."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image

from cnnzoo.protos import grpc_service_pb2_grpc, zoo_pb2, zoo_pb2_grpc
from cnnzoo.serving.grpc_api.transport import TransportOptions
from tests.serving.helpers import QUEUE_DELAY_S, QUEUED, ServerProcess
from tests.serving.requests import encode, infer_request

X = np.zeros((1, 1, 32, 32), np.float32)
MAX_RPCS, MAX_WAITING, MAX_QUEUE, MAX_STREAMS, IDLE_MS = 2, 1, 3, 2, 1000


@pytest.fixture(scope="module")
def limited(repository, tmp_path_factory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("transport-logs") / "server.log"
    process = ServerProcess(
        repository,
        log,
        "--model",
        QUEUED,
        "--metrics-port",
        "-1",
        "--max-concurrent-requests",
        str(MAX_RPCS),
        "--max-waiting-requests",
        str(MAX_WAITING),
        "--max-queue-size",
        str(MAX_QUEUE),
        "--max-concurrent-streams",
        str(MAX_STREAMS),
        "--grpc-max-connection-idle",
        str(IDLE_MS),
    ).wait_ready()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


# Near the stream limit a stream that has just closed may still count on the server, which then
# refuses the next with RST_STREAM (UNAVAILABLE "Stream removed"); clients retry that.
RETRY_UNAVAILABLE = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def connect(target: str, *options: tuple[str, object]) -> grpc.Channel:
    """A channel on its own connection (gRPC would otherwise share one connection among the
    channels of a process, and the per-connection stream limit would come first)."""
    channel = grpc.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1), *options]
    )
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel


def test_calls_over_the_servers_limit_wait_and_beyond_the_waiting_bound_are_refused(limited):
    channels = [connect(limited.target) for _ in range(MAX_RPCS + MAX_WAITING + 1)]  # one each
    try:
        futures = [
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(c).ModelInfer.future(
                infer_request(X, model=QUEUED), timeout=30
            )
            for c in channels
        ]
        codes, refusals = outcomes(futures)
    finally:
        for channel in channels:
            channel.close()
    assert codes.count(grpc.StatusCode.OK) == MAX_RPCS + MAX_WAITING, (codes, refusals)
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 1, (codes, refusals)
    assert f"--max-concurrent-requests {MAX_RPCS}" in refusals[0], refusals
    assert f"--max-waiting-requests {MAX_WAITING}" in refusals[0], refusals


def outcomes(futures) -> tuple[list[grpc.StatusCode], list[str]]:
    codes, refusals = [], []
    for future in futures:
        try:
            future.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            codes.append(err.code())
            refusals.append(err.details())
    return codes, refusals


def test_a_request_that_does_not_fit_the_model_queue_is_refused_whole(limited):
    """A Classify call of 193 images needs four places in `lenet5-queued`'s queue (batches of
    64, 64, 64 and 1) and the queue has MAX_QUEUE: it is refused before any batch is queued.
    (A queue that fills up request by request: tests/serving/test_dataplane.py.)"""
    tiny = encode(Image.new("L", (1, 1)))
    with connect(limited.target) as channel:
        zoo = zoo_pb2_grpc.ZooStub(channel)
        request = zoo_pb2.ClassifyRequest(model=QUEUED, images=[tiny] * 193)
        with pytest.raises(grpc.RpcError) as info:
            zoo.Classify(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Exceeds maximum queue size: the request needs 4 places" in info.value.details()
        assert f"max_queue_size {MAX_QUEUE}" in info.value.details()
        request = zoo_pb2.ClassifyRequest(model=QUEUED, images=[tiny] * 129)  # three places
        assert len(zoo.Classify(request, timeout=30).results) == 129


def test_streams_over_the_connections_limit_wait_for_a_free_one(limited):
    with connect(limited.target, ("grpc.service_config", RETRY_UNAVAILABLE)) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        started = time.monotonic()
        futures = [
            stub.ModelInfer.future(infer_request(X, model=QUEUED), timeout=30)
            for _ in range(2 * MAX_STREAMS)
        ]
        for future in futures:
            assert future.result().model_name == QUEUED  # none refused: they waited
        elapsed = time.monotonic() - started
    # Two streams at a time: the second pair starts when the first pair's batch has run.
    assert elapsed >= 1.8 * QUEUE_DELAY_S, elapsed


def test_an_idle_connection_is_closed_by_the_server(limited):
    states: list[grpc.ChannelConnectivity] = []
    idle = threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if state == grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in states:
            idle.set()

    with connect(limited.target) as channel:
        channel.subscribe(watch)
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(infer_request(X, model=QUEUED), timeout=30)
        assert idle.wait(5 * IDLE_MS / 1000), states
        # The client reconnects on its next call.
        assert stub.ModelInfer(infer_request(X, model=QUEUED), timeout=30).model_name == QUEUED
        channel.unsubscribe(watch)


def test_transport_settings_become_grpc_core_arguments():
    args = dict(
        TransportOptions(
            max_concurrent_streams=7,
            keepalive_time_ms=1000,
            keepalive_timeout_ms=500,
            keepalive_permit_without_calls=True,
            http2_min_recv_ping_interval_without_data_ms=2000,
            http2_max_ping_strikes=0,
            max_connection_age_ms=60_000,
            max_connection_age_grace_ms=5000,
        ).channel_args()
    )
    assert args == {
        "grpc.max_concurrent_streams": 7,
        "grpc.keepalive_time_ms": 1000,
        "grpc.keepalive_timeout_ms": 500,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.min_ping_interval_without_data_ms": 2000,
        "grpc.http2.max_ping_strikes": 0,
        "grpc.max_connection_age_ms": 60_000,
        "grpc.max_connection_age_grace_ms": 5000,
    }
    from cnnzoo.errors import InvalidInput

    with pytest.raises(InvalidInput, match="--grpc-keepalive-time must be >= 1"):
        TransportOptions(keepalive_time_ms=0)
    with pytest.raises(InvalidInput, match="--max-concurrent-streams must be >= 1"):
        TransportOptions(max_concurrent_streams=0)
