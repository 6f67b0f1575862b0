"""Server life cycle: hot reload under load, SIGTERM drain, start-up errors.

These tests start their own servers (the shared one must not be reloaded or stopped).
"""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from collections import defaultdict

import grpc
import numpy as np
import pytest

from cnnzoo.protos import grpc_service_pb2, grpc_service_pb2_grpc, zoo_pb2, zoo_pb2_grpc
from tests.serving.helpers import DIGITS, MODEL, ROOT, ServerProcess, cnnzoo, eventually, export
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
        self._inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
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
        return {v for outcomes in list(self.outcomes.values()) for _, v, _ in outcomes}

    def every_worker_saw(self, version: str) -> bool:
        """Every worker has had an answer from `version` (read without adding workers)."""
        return all(
            any(v == version for _, v, _ in self.outcomes.get(worker, ()))
            for worker in range(len(self._threads))
        )

    def answers(self) -> int:
        return sum(len(outcomes) for outcomes in list(self.outcomes.values()))


def test_hot_reload_under_load_then_sigterm_drain(repository, tmp_path):
    repo = tmp_path / "repository"
    shutil.copytree(repository / MODEL, repo / MODEL)
    server = ServerProcess(repo, tmp_path / "server.log", "--poll-seconds", "0.2").wait_ready()
    try:
        with Load(server.target) as load:
            eventually(lambda: load.every_worker_saw("1"), "answers from version 1")
            # A new version with other weights appears while requests are running.
            export(repo, "--version", "2", "--weights", str(EPOCH_1))
            eventually(
                lambda: load.every_worker_saw("2") and load.answers() > 50,
                lambda: f"every worker to be answered by version 2 ({load.answers()} answers)",
                timeout=30,
            )
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
            # the server is answering them: the rest are in flight
            eventually(lambda: finished, "the first Classify answer", interval=0.002)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            for future in futures:
                assert len(future.result().results) == len(big.images)
            assert max(finished) > signalled, "nothing was in flight when SIGTERM arrived"
            # Once draining, the server is never ready again: during the short settle after
            # the signal it still answers (ready=false), once the port has closed it refuses.
            try:
                reply = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerReady(
                    grpc_service_pb2.ServerReadyRequest(), timeout=5
                )
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            else:
                assert not reply.ready, "ready while draining"
        assert server.proc.wait(30) == 0, server.log()
        assert "stopped" in server.log() and "Traceback" not in server.log()
    finally:
        server.stop()


def test_start_up_errors_are_one_line(repository, tmp_path):
    from cnnzoo.serving.runtime import cuda_unavailable_reason

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

    from cnnzoo.serving.dataplane import DataPlane
    from cnnzoo.serving.model_manager import ModelManager
    from cnnzoo.serving.runtime import RuntimeOptions
    from cnnzoo.zoo.repository import ModelRepository

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
        served = manager.get(MODEL)
        # Warmed before ready: powers of two up to max_batch_size 64, and every batch size the
        # server may run maps onto one of them.
        assert served.runtime.warmed_sizes == (1, 2, 4, 8, 16, 32, 64)
        run_sizes = {served.runtime.run_size(n) for n in range(1, served.spec.max_batch_size + 1)}
        assert run_sizes == set(served.runtime.warmed_sizes)
        assert served.stats.execution_count == 0  # warm-up is not traffic
        plane.draining = True
        assert not plane.ready() and not plane.model_ready(MODEL)
        await manager.close()
        plane.close()

    asyncio.run(main())


def test_the_newest_sound_version_serves_and_a_completed_copy_is_picked_up(
    repository, tmp_path, caplog
):
    """Version 2 copied in non-atomically (manifest first, model.onnx last): version 1 serves
    meanwhile, the refusal is logged once, and the next poll after the copy completes serves 2."""
    import asyncio
    import json
    import logging

    from cnnzoo.serving.model_manager import ModelManager
    from cnnzoo.serving.runtime import RuntimeOptions
    from cnnzoo.zoo.repository import ModelRepository

    repo = tmp_path / "repository"
    shutil.copytree(repository / MODEL, repo / MODEL)
    one, two = repo / MODEL / "1", repo / MODEL / "2"
    two.mkdir()
    manifest = json.loads((one / "manifest.json").read_text())
    manifest["version"] = 2
    manifest["files"] = {
        name.replace("1/", "2/", 1) if name.startswith("1/") else name: digest
        for name, digest in manifest["files"].items()
    }
    (two / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy2(one / "model.safetensors", two)

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]

    async def main() -> None:
        manager = ModelManager(
            ModelRepository(repo), RuntimeOptions(device="cpu", intra_op_threads=1)
        )
        manager.discover()
        await manager.load_all()
        assert manager.get(MODEL).version == 1
        assert refusals() == [
            f"refused {MODEL} version 2: {MODEL}/2/model.onnx is missing (listed in its manifest)"
        ]
        await manager.poll()  # nothing changed: version 2 is not tried again
        assert manager.get(MODEL).version == 1 and len(refusals()) == 1
        shutil.copy2(one / "model.onnx", two)  # the copy completes
        await manager.poll()
        assert manager.get(MODEL).version == 2
        assert manager.record(MODEL).failed == {}
        await manager.close()

    with caplog.at_level(logging.INFO, logger="cnnzoo.serving.model_manager"):
        asyncio.run(main())


def test_ports_out_of_range_are_one_clear_error(repository):
    from cnnzoo.errors import InvalidInput
    from cnnzoo.serving.server import ServerOptions

    cases = [
        ({"port": 70000}, "--port must be 0-65535 (0: any free port), got 70000"),
        ({"port": -1}, "--port must be 0-65535"),
        ({"metrics_port": 65536}, "--metrics-port must be 0-65535 (0: any free port) or -1"),
        ({"metrics_port": -2}, "got -2"),
    ]
    for ports, fragment in cases:
        with pytest.raises(InvalidInput, match=re.escape(fragment)):
            ServerOptions(repository=repository, **ports)
    ServerOptions(repository=repository, port=0, metrics_port=-1)  # any port; no metrics
    # The command line: one line, non-zero exit (it used to serve on port 70000 - 65536).
    result = cnnzoo("serve", "--repository", str(repository), "--port", "70000", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cnnzoo serve: error: --port must be 0-65535 (0: any free port), got 70000"
    ]


def test_a_server_with_nothing_to_serve_says_so(repository, tmp_path, caplog):
    """An empty repository, and one whose only model is refused: a warning saying that nothing
    is served and why (never a "ready:" line), and health NOT_SERVING."""
    import asyncio
    import logging

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from cnnzoo.serving.server import InferenceServer, ServerOptions
    from tests.serving.helpers import TAMPERED

    empty = tmp_path / "empty"
    empty.mkdir()
    refused = tmp_path / "refused"
    shutil.copytree(repository / TAMPERED, refused / TAMPERED)

    async def start_and_check(root) -> str:
        server = InferenceServer(ServerOptions(repository=root, port=0, metrics_port=-1))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            await server.stop()
        messages = [r.getMessage() for r in caplog.records if r.name == "cnnzoo.serving.server"]
        caplog.clear()
        assert not any(m.startswith("ready") for m in messages), messages
        (line,) = [m for m in messages if m.startswith("not ready")]
        return line

    with caplog.at_level(logging.INFO, logger="cnnzoo.serving.server"):
        line = asyncio.run(start_and_check(empty))
        assert line.startswith("not ready, nothing is served: the repository")
        assert f"{empty} holds no models" in line and "cnnzoo export" in line
        line = asyncio.run(start_and_check(refused))
        assert f"no model could be loaded: {TAMPERED}: version 1:" in line and "sha256" in line


def test_a_client_leaving_mid_reply_is_not_logged_as_a_server_error(caplog):
    """grpc reports a reply the caller no longer waits for as ExecuteBatchError + traceback."""
    import logging

    from cnnzoo.serving.server import ClientGoneFilter

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
