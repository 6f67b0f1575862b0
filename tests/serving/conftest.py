"""Fixtures for the serving tests: one exported repository and one shared server per session.

The repository is written by the real `cnnzoo export` (the shipped LeNet-5 weights). A copy of
the model with one flipped byte in its ONNX file (`lenet5-tampered`) shows that a model whose
sha256 does not match its manifest is refused while the others serve. A copy whose config makes
a request wait up to `QUEUE_DELAY_S` for its batch to fill (`lenet5-queued`) lets a deadline
pass while a request is queued in the server.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.serving.helpers import MODEL, QUEUE_DELAY_S, QUEUED, TAMPERED, ServerProcess

# The tests assert status codes and exit codes, so the default message limit of the shared
# server is lowered to keep the oversized-message case cheap.
SHARED_SERVER_MAX_MESSAGE_MB = "4"


def export(repository: Path, *extra: str) -> None:
    from cnnzoo.cli import main

    # classifiers only: these tests count and serve the repository's classifiers
    assert main(["export", MODEL, "--repository", str(repository), "--explanations", "none",
                 *extra]) == 0  # fmt: skip


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    export(root)
    tampered = root / TAMPERED
    shutil.copytree(root / MODEL, tampered)
    onnx_file = tampered / "1" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    copy_model(root, MODEL, QUEUED, max_queue_delay_us=int(QUEUE_DELAY_S * 1e6))
    return root


def copy_model(
    root: Path,
    source: str,
    name: str,
    *,
    max_queue_delay_us: int = 0,
    edit: Callable[[Any], None] | None = None,
) -> None:
    """Copy model `source` as `name` with another queue delay and whatever `edit` changes in its
    ModelConfig (its manifest updated to match)."""
    import json

    from google.protobuf import text_format

    from cnnzoo.fileio import sha256_file
    from cnnzoo.protos import model_config_pb2

    shutil.copytree(root / source, root / name)
    config_file = root / name / "config.pbtxt"
    config = text_format.Parse(config_file.read_text(), model_config_pb2.ModelConfig())
    config.name = name
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if edit is not None:
        edit(config)
    config_file.write_text(text_format.MessageToString(config))
    for manifest_file in (root / name).glob("*/manifest.json"):
        manifest = json.loads(manifest_file.read_text())
        manifest["model"] = name
        manifest["files"]["config.pbtxt"] = sha256_file(config_file)
        manifest_file.write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    process = ServerProcess(
        repository, log, "--max-message-mb", SHARED_SERVER_MAX_MESSAGE_MB
    ).wait_ready()
    yield process
    code = process.stop()
    assert code == 0, f"server exited with {code} on SIGTERM:\n{process.log()}"
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(scope="session")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        server.target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as chan:
        yield chan


@pytest.fixture(scope="session")
def inference(channel: grpc.Channel):
    from cnnzoo.protos import grpc_service_pb2_grpc

    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="session")
def zoo_stub(channel: grpc.Channel):
    from cnnzoo.protos import zoo_pb2_grpc

    return zoo_pb2_grpc.ZooStub(channel)


@pytest.fixture(scope="session")
def onnx_reference(repository: Path):
    """An in-process ONNX Runtime session on the served model.onnx (the reference answers)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(repository / MODEL / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
