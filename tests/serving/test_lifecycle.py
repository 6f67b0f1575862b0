"""Server life cycle: hot reload under load, SIGTERM drain, start-up errors.

These tests start their own servers (the shared one must not be reloaded or stopped).
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections import defaultdict

import grpc
import numpy as np
import pytest

from protos import inference_pb2, inference_pb2_grpc, zoo_pb2, zoo_pb2_grpc
from tests.serving.conftest import export
from tests.serving.helpers import DIGITS, MODEL, ROOT, ServerProcess, cnnzoo
from tests.serving.requests import infer_request

EPOCH_1 = ROOT / "zoo" / "weights" / MODEL / "epochs" / "epoch_001.safetensors"
X = np.random.default_rng(5).standard_normal((1, 1, 32, 32)).astype(np.float32)


def reference(model_onnx) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_onnx), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": X})[0]


class Load:
    """Clients calling ModelInfer and Classify in a loop, recording every outcome per worker."""

    def __init__(self, target: str, workers: int = 3) -> None:
        self._channel = grpc.insecure_channel(target)
        self._inference = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._zoo = zoo_pb2_grpc.ZooStub(self._channel)
        self._stop = threading.Event()
        self.outcomes: dict[int, list[tuple[str, str, bytes]]] = defaultdict(list)
        self._threads = [threading.Thread(target=self._work, args=(i,)) for i in range(workers)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._channel.close()

    def _work(self, worker: int) -> None:
        image = DIGITS[0].read_bytes()
        while not self._stop.is_set():
            try:
                if worker == 0:
                    reply = self._zoo.Classify(
                        zoo_pb2.ClassifyRequest(model=MODEL, images=[image]), timeout=30
                    )
                    outcome = ("OK", reply.version, b"")
                else:
                    reply = self._inference.ModelInfer(infer_request(X), timeout=30)
                    outcome = ("OK", reply.model_version, reply.raw_output_contents[0])
            except grpc.RpcError as err:
                outcome = (err.code().name, "", err.details().encode())
            self.outcomes[worker].append(outcome)

    def versions_seen(self) -> set[str]:
        return {v for outcomes in self.outcomes.values() for _, v, _ in outcomes}


def test_hot_reload_under_load_then_sigterm_drain(repository, tmp_path):
    repo = tmp_path / "repository"
    shutil.copytree(repository / MODEL, repo / MODEL)
    server = ServerProcess(repo, tmp_path / "server.log", "--poll-seconds", "0.2").wait_ready()
    try:
        with Load(server.target) as load:
            time.sleep(0.3)
            # A new version with other weights appears while requests are running.
            export(repo, "--version", "2", "--weights", str(EPOCH_1))
            deadline = time.monotonic() + 30
            while "2" not in load.versions_seen() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
        outcomes = [o for worker in load.outcomes.values() for o in worker]
        failed = [o for o in outcomes if o[0] != "OK"]
        assert not failed, failed[:3]
        assert load.versions_seen() == {"1", "2"}, "the server never switched to version 2"
        assert len(outcomes) > 50
        expected = {
            "1": reference(repo / MODEL / "1" / "model.onnx").tobytes(),
            "2": reference(repo / MODEL / "2" / "model.onnx").tobytes(),
        }
        assert expected["1"] != expected["2"]
        for worker, worker_outcomes in load.outcomes.items():
            versions = [v for _, v, _ in worker_outcomes]
            first_new = versions.index("2")
            assert set(versions[first_new:]) == {"2"}, f"worker {worker} went back to version 1"
            for _, version, raw in worker_outcomes:
                if raw:
                    assert raw == expected[version]
        assert "replacing version 1" in server.log()

        # SIGTERM with requests in flight: all of them finish, then exit 0.
        with grpc.insecure_channel(server.target) as channel:
            zoo = zoo_pb2_grpc.ZooStub(channel)
            big = zoo_pb2.ClassifyRequest(model=MODEL, images=[p.read_bytes() for p in DIGITS] * 4)
            finished: list[float] = []
            futures = [zoo.Classify.future(big, timeout=60) for _ in range(12)]
            for future in futures:
                future.add_done_callback(lambda _: finished.append(time.monotonic()))
            time.sleep(0.05)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            for future in futures:
                assert len(future.result().results) == len(big.images)
            assert max(finished) > signalled, "nothing was in flight when SIGTERM arrived"
            with pytest.raises(grpc.RpcError) as info:
                inference_pb2_grpc.GRPCInferenceServiceStub(channel).ServerReady(
                    inference_pb2.ServerReadyRequest(), timeout=5
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.proc.wait(30) == 0, server.log()
        assert "stopped" in server.log() and "Traceback" not in server.log()
    finally:
        server.stop()


def test_start_up_errors_are_one_line(repository, tmp_path):
    from serving.runtime import cuda_unavailable_reason

    unknown = cnnzoo("serve", "--repository", str(repository), "--model", "nope", "--port", "0")
    assert unknown.returncode != 0
    assert unknown.stderr.strip().splitlines()[-1].startswith("cnnzoo serve: error: model 'nope'")

    missing = cnnzoo("serve", "--repository", str(tmp_path / "nothing"), "--port", "0")
    assert missing.returncode != 0 and "does not exist" in missing.stderr

    reason = cuda_unavailable_reason()
    if reason is not None:  # no usable CUDA here: --device cuda must refuse, naming why
        cuda = cnnzoo("serve", "--repository", str(repository), "--device", "cuda", "--port", "0")
        assert cuda.returncode != 0
        line = cuda.stderr.strip().splitlines()[-1]
        assert line.startswith("cnnzoo serve: error: --device cuda:"), cuda.stderr
        assert reason in line


def test_not_ready_until_every_model_is_loaded_and_warmed_up(repository):
    import asyncio

    from serving.dataplane import DataPlane
    from serving.models import ModelManager
    from serving.runtime import RuntimeOptions
    from zoo.repository import ModelRepository

    async def main() -> None:
        manager = ModelManager(
            ModelRepository(repository), RuntimeOptions(device="cpu"), models=[MODEL]
        )
        manager.discover()
        plane = DataPlane(manager, "cnnzoo", "test")
        assert not plane.ready() and not plane.model_ready(MODEL)
        loading = asyncio.ensure_future(manager.load_all())
        await asyncio.sleep(0)
        assert not plane.ready(), "ready before the load finished"
        await loading
        assert plane.ready() and plane.model_ready(MODEL)
        assert manager.get(MODEL).stats.execution_count == 0  # warm-up is not traffic
        plane.draining = True
        assert not plane.ready() and not plane.model_ready(MODEL)
        await manager.close()
        plane.close()

    asyncio.run(main())


def test_a_client_leaving_mid_reply_is_not_logged_as_a_server_error(caplog):
    """grpc reports a reply the caller no longer waits for as ExecuteBatchError + traceback."""
    import logging

    from serving.server import ClientGoneFilter

    logger = logging.getLogger("tests.serving.grpc-core-like")
    logger.addFilter(ClientGoneFilter())
    try:
        raise RuntimeError('Failed "execute_batch"')
    except RuntimeError:
        logger.exception("ExecuteBatchError raised in core by servicer method [%s]", "/m")
    logger.error("a real failure")
    messages = [record.getMessage() for record in caplog.records]
    assert "a real failure" in messages
    assert not any("ExecuteBatchError" in m for m in messages)
    assert not any(record.exc_info for record in caplog.records)
