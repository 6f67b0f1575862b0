"""A repository that goes wrong under a running server: unreadable folders, files changed or
removed after they were loaded. One server (polling every 0.2 s) over one repository; each test
damages its own model and asserts what clients see, what the log says, and that every other
model keeps serving.

Models (copies of the session's LeNet-5):
- `lenet5-locked`: its folder is unreadable (mode 000) from the start; it sorts before the
  others, so a server that stopped at it would never reach them.
- `lenet5-mnist`: sound; a new version appears while the server runs.
- `lenet5-partly`: version 1 sound, version 2's folder unreadable.
- `lenet5-rollback`: versions 1 and 2; version 2's folder is removed while it serves.
- `lenet5-solo`: version 1 only, and its folder is removed while it serves.
- `lenet5-corrupt`: its served model.onnx gets a flipped byte.

(Explain re-checking the weights it reads late is tested in process, in test_dataplane.py: the
server would spend seconds importing torch for it.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from cnnzoo.protos import grpc_service_pb2_grpc, zoo_pb2, zoo_pb2_grpc
from tests.serving.helpers import DIGITS, MODEL, ServerProcess, add_version, eventually
from tests.serving.requests import infer_request

LOCKED, PARTLY, ROLLBACK, SOLO, CORRUPT = (
    "lenet5-locked",
    "lenet5-partly",
    "lenet5-rollback",
    "lenet5-solo",
    "lenet5-corrupt",
)
X = np.random.default_rng(8).standard_normal((1, 1, 32, 32)).astype(np.float32)


def rename_model(root: Path, source: str, name: str) -> None:
    from tests.serving.helpers import copy_model

    copy_model(root, source, name, max_queue_delay_us=0)


@pytest.fixture(scope="module")
def repo(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("faulty") / "repository"
    shutil.copytree(repository / MODEL, root / MODEL)
    for name in (LOCKED, PARTLY, ROLLBACK, SOLO, CORRUPT):
        rename_model(root, MODEL, name)
    add_version(root / PARTLY, 1, 2)
    add_version(root / ROLLBACK, 1, 2)
    os.chmod(root / LOCKED, 0)
    os.chmod(root / PARTLY / "2", 0)
    yield root
    for folder in (root / LOCKED, root / PARTLY / "2"):
        os.chmod(folder, 0o755)  # so that pytest can remove the temporary folder


@pytest.fixture(scope="module")
def faulty(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("faulty-logs") / "server.log"
    process = ServerProcess(repo, log, "--poll-seconds", "0.2", restricted_files=True)
    process.wait_ready()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(scope="module")
def stubs(faulty: ServerProcess) -> Iterator[tuple]:
    with grpc.insecure_channel(faulty.target) as channel:
        yield (
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel),
            zoo_pb2_grpc.ZooStub(channel),
        )


def models(zoo) -> dict[str, zoo_pb2.ModelSummary]:
    return {m.name: m for m in zoo.ListModels(zoo_pb2.ListModelsRequest(), timeout=10).models}


def served_version(inference, model: str) -> str:
    return inference.ModelInfer(infer_request(X, model=model), timeout=10).model_version


def test_an_unreadable_model_folder_is_reported_while_the_others_serve(faulty, stubs, repo):
    inference, zoo = stubs
    listed = models(zoo)
    locked = listed[LOCKED]
    assert locked.state == "UNAVAILABLE" and not locked.ready
    assert "Permission denied" in locked.reason, locked.reason
    with pytest.raises(grpc.RpcError) as info:
        inference.ModelInfer(infer_request(X, model=LOCKED), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert LOCKED in info.value.details() and "Permission denied" in info.value.details()
    for name in (MODEL, PARTLY, ROLLBACK, SOLO, CORRUPT):
        assert listed[name].state == "READY", (name, listed[name].reason)
    # No server path reaches a client, in ListModels or in a status message.
    for text in [m.reason for m in listed.values()] + [info.value.details()]:
        assert str(repo) not in text and str(repo.resolve()) not in text, text


def test_an_unreadable_version_folder_leaves_the_models_other_versions_serving(faulty, stubs):
    inference, zoo = stubs
    assert served_version(inference, PARTLY) == "1"
    assert f"refused {PARTLY} version 2: cannot read the model's files (Permission denied" in (
        faulty.log()
    )


def test_polling_goes_on_past_an_unreadable_model(faulty, stubs, repo):
    """A new version of a model listed after the unreadable one is picked up, and the repeated
    polls log the unreadable model once, without a traceback."""
    inference, _ = stubs
    assert served_version(inference, MODEL) == "1"
    add_version(repo / MODEL, 1, 2)
    eventually(lambda: served_version(inference, MODEL) == "2", "version 2 to be served")
    for version in ("3", "4"):  # two more polls, each past the unreadable model again
        add_version(repo / MODEL, 1, int(version))
        eventually(lambda v=version: served_version(inference, MODEL) == v, f"version {version}")
    log = faulty.log()
    assert log.count(f"model {LOCKED} is unavailable") == 1, log
    assert "Traceback" not in log


def test_a_served_model_onnx_corrupted_on_disk_is_reported_and_the_loaded_copy_serves(
    faulty, stubs, repo
):
    inference, zoo = stubs
    before = inference.ModelInfer(infer_request(X, model=CORRUPT), timeout=10)
    onnx_file = repo / CORRUPT / "1" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    eventually(lambda: "changed on disk" in models(zoo)[CORRUPT].reason, "the change to be seen")
    summary = models(zoo)[CORRUPT]
    assert summary.state == "READY" and summary.version == "1"
    assert "model.onnx sha256" in summary.reason and "restart would refuse" in summary.reason
    after = inference.ModelInfer(infer_request(X, model=CORRUPT), timeout=10)
    assert after.raw_output_contents == before.raw_output_contents
    assert faulty.log().count(f"model {CORRUPT}: the files of version 1 changed on disk") == 1


def test_removing_the_served_versions_folder_rolls_back_to_the_newest_remaining_one(
    faulty, stubs, repo
):
    inference, zoo = stubs
    assert served_version(inference, ROLLBACK) == "2"
    shutil.rmtree(repo / ROLLBACK / "2")
    eventually(lambda: served_version(inference, ROLLBACK) == "1", "version 1 to serve again")
    assert list(models(zoo)[ROLLBACK].versions) == ["1"]
    assert f"the folder of {ROLLBACK} version 2 was removed" in faulty.log()


def test_removing_the_only_versions_folder_keeps_it_serving_and_listed(faulty, stubs, repo):
    inference, zoo = stubs
    shutil.rmtree(repo / SOLO / "1")
    eventually(lambda: "removed" in models(zoo)[SOLO].reason, "the removal to be reported")
    summary = models(zoo)[SOLO]
    assert summary.state == "READY" and summary.version == "1"
    assert list(summary.versions) == ["1"], "the served version vanished from ListModels"
    assert "keeps serving until the server restarts" in summary.reason
    assert served_version(inference, SOLO) == "1"


def test_sigterm_answers_every_call_already_on_its_way(faulty):
    """64 callers keep the server busy with ModelInfer, then each sends a Classify call of 60
    digits; 10 ms after the last was sent comes SIGTERM. Every call is answered: none is cut off
    as the port closes (the server takes calls until they stop arriving; before, some of the
    last calls ended CANCELLED: received by gRPC's core, not yet taken by the event loop)."""
    import asyncio
    import signal

    digit = DIGITS[0].read_bytes()

    async def main() -> list[str]:
        async with grpc.aio.insecure_channel(faulty.target) as channel:
            inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            zoo = zoo_pb2_grpc.ZooStub(channel)
            classify = zoo_pb2.ClassifyRequest(model=MODEL, images=[digit] * 60, top_k=1)
            busy_until = asyncio.get_running_loop().time() + 1.0
            sent = asyncio.Event()
            pending = 64

            async def caller() -> str:
                nonlocal pending
                while asyncio.get_running_loop().time() < busy_until:
                    await inference.ModelInfer(infer_request(X), timeout=30)
                call = zoo.Classify(classify, timeout=60)
                pending -= 1
                if not pending:
                    sent.set()
                try:
                    reply = await call
                    return "OK" if len(reply.results) == 60 else "short"
                except grpc.aio.AioRpcError as err:
                    return err.code().name

            callers = [asyncio.ensure_future(caller()) for _ in range(64)]
            await sent.wait()
            await asyncio.sleep(0.01)
            faulty.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*callers)

    outcomes = asyncio.run(main())
    assert outcomes == ["OK"] * 64, sorted(set(outcomes))
    assert faulty.proc.wait(60) == 0
