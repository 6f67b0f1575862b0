"""ModelStreamInfer against the shared server: tritonclient's stream API, many requests on one
stream, a bad request between good ones, cancellation, deadlines and a client that dies."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import tritonclient.grpc as triton

from cnnzoo.protos import grpc_service_pb2
from tests.serving.checks import SAMPLE, assert_still_serving, reference_logits, scrape
from tests.serving.helpers import MODEL, QUEUE_DELAY_S, QUEUED, ROOT, eventually
from tests.serving.requests import infer_request, logits_of


def statistics(inference, model: str) -> tuple[int, int, int]:
    """(inference_count, success count, fail count) of `model`."""
    request = grpc_service_pb2.ModelStatisticsRequest(name=model)
    (stats,) = inference.ModelStatistics(request).model_stats
    counts = stats.inference_stats
    return stats.inference_count, counts.success.count, counts.fail.count


def tensor(x: np.ndarray) -> triton.InferInput:
    t = triton.InferInput("input", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    return t


def test_tritonclient_stream_answers_each_request_and_a_bad_one_alone(server, onnx_reference):
    answers: queue.Queue = queue.Queue()
    client = triton.InferenceServerClient(server.target)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    bad = {2: ("nope", SAMPLE[:1]), 4: (MODEL, np.zeros((1, 1, 28, 28), np.float32))}
    for i in range(7):
        model, x = bad.get(i, (MODEL, SAMPLE[i % 3 : i % 3 + 1]))
        client.async_stream_infer(model, [tensor(x)], request_id=f"r{i}")
    results = [answers.get(timeout=10) for _ in range(7)]
    client.stop_stream()
    client.close()
    errors = [str(error) for _, error in results if error is not None]
    assert len(errors) == 2
    assert "unknown model 'nope'" in errors[0]
    assert "must have shape [-1, 1, 32, 32], got [1, 1, 28, 28]" in errors[1]
    good = [result for result, error in results if error is None]
    assert [r.get_response().id for r in good] == ["r0", "r1", "r3", "r5", "r6"]
    for result in good:
        i = int(result.get_response().id[1:]) % 3
        expected = reference_logits(onnx_reference, SAMPLE[i : i + 1])
        np.testing.assert_array_equal(result.as_numpy("logits"), expected)
        assert result.get_response().parameters["triton_final_response"].bool_param


def test_ten_thousand_requests_on_one_stream(inference, onnx_reference):
    count = 10_000
    x = SAMPLE[:1]

    def requests():
        for i in range(count):
            request = infer_request(x)
            request.id = str(i)
            yield request

    answers = list(inference.ModelStreamInfer(requests(), timeout=120))
    assert len(answers) == count
    assert [a.infer_response.id for a in answers] == [str(i) for i in range(count)]
    assert not any(a.error_message for a in answers)
    expected = reference_logits(onnx_reference, x)
    for answer in answers[:: count // 10]:
        np.testing.assert_array_equal(logits_of(answer.infer_response), expected)


def test_error_answers_carry_the_request_id_and_the_stream_carries_on(inference, onnx_reference):
    wrong = infer_request(SAMPLE[:1], datatype="FP16", model=MODEL)
    wrong.id = "bad"
    good = infer_request(SAMPLE[:1])
    good.id = "good"
    first, second = inference.ModelStreamInfer(iter([wrong, good]), timeout=10)
    assert "must be FP32, got 'FP16'" in first.error_message
    assert first.infer_response.id == "bad" and first.infer_response.model_name == MODEL
    assert not second.error_message and second.infer_response.id == "good"
    np.testing.assert_array_equal(
        logits_of(second.infer_response), reference_logits(onnx_reference, SAMPLE[:1])
    )


def test_a_request_timeout_fails_that_request_only(inference):
    """QUEUED holds a lone request QUEUE_DELAY_S for its batch to fill: a request whose own
    `timeout` is shorter is answered with the deadline error; the next one is answered."""
    hurried = infer_request(SAMPLE[:1], model=QUEUED)
    hurried.id = "hurried"
    hurried.parameters["timeout"].int64_param = int(QUEUE_DELAY_S * 1e6 / 4)
    patient = infer_request(SAMPLE[1:2], model=QUEUED)
    patient.id = "patient"
    first, second = inference.ModelStreamInfer(iter([hurried, patient]), timeout=30)
    assert first.infer_response.id == "hurried"
    assert "deadline passed" in first.error_message and "not run" in first.error_message
    assert second.infer_response.id == "patient" and not second.error_message


def test_the_stream_deadline_ends_the_call_and_queued_requests_never_run(inference):
    before = statistics(inference, QUEUED)
    call = inference.ModelStreamInfer(
        iter([infer_request(SAMPLE[:1], model=QUEUED)] * 3), timeout=QUEUE_DELAY_S / 4
    )
    try:
        answers = list(call)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:  # the queue's own deadline timer answered them just before grpc ended the call
        assert len(answers) == 3 and all("deadline passed" in a.error_message for a in answers)
    after = wait_for_fails(inference, before, 3)
    assert after[0] == before[0], "requests of an expired stream ran"


def test_cancelling_mid_stream_drops_its_queued_requests(server, inference, onnx_reference):
    before = statistics(inference, QUEUED)
    sent: queue.Queue = queue.Queue()

    def requests():
        for _ in range(4):
            sent.put(None)
            yield infer_request(SAMPLE[:1], model=QUEUED)
        time.sleep(30)  # keep the stream open; the client cancels it

    call = inference.ModelStreamInfer(requests(), timeout=60)
    for _ in range(4):
        sent.get(timeout=10)
    wait_for_queued(server, 4)
    call.cancel()
    after = wait_for_fails(inference, before, 4)
    assert after[0] == before[0], "cancelled requests ran"
    assert_still_serving(inference, onnx_reference)


DEAD_CLIENT = """
import sys, time
import grpc
from cnnzoo.protos import grpc_service_pb2_grpc
from tests.serving.requests import infer_request
import numpy as np
channel = grpc.insecure_channel(sys.argv[1])
stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
def requests():
    for _ in range(3):
        yield infer_request(np.zeros((1, 1, 32, 32), np.float32), model=sys.argv[2])
    print("sent", flush=True)
    time.sleep(600)
for answer in stub.ModelStreamInfer(requests()):
    pass
"""


def test_a_stream_left_open_by_a_killed_client_is_released(server, inference, onnx_reference):
    before = statistics(inference, QUEUED)
    client = subprocess.Popen(
        [sys.executable, "-c", DEAD_CLIENT, server.target, QUEUED],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert client.stdout.readline().strip() == "sent"
        wait_for_queued(server, 3)
        client.send_signal(signal.SIGKILL)
        client.wait(10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        client.stdout.close()
    after = wait_for_fails(inference, before, 3)
    assert after[0] == before[0], "the dead client's requests ran"
    assert_still_serving(inference, onnx_reference)


def wait_for_fails(inference, before, fails: int, timeout: float = 10):
    """Wait until QUEUED's failure count grew by `fails`; return its statistics."""

    def grown():
        now = statistics(inference, QUEUED)
        return now if now[2] - before[2] >= fails else None

    return eventually(
        grown,
        lambda: (
            f"{fails} more failures (statistics {statistics(inference, QUEUED)}, before {before})"
        ),
        timeout=timeout,
        interval=0.02,
    )


def wait_for_queued(server, count: int, timeout: float = 10) -> None:
    """Wait until `count` requests wait in QUEUED's queue (its pending-request gauge)."""
    eventually(
        lambda: scrape(server)[("nv_inference_pending_request_count", QUEUED)] >= count,
        "the requests to reach the server's queue",
        timeout=timeout,
        interval=0.02,
    )
