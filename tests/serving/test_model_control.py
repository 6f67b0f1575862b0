"""Triton's model control (RepositoryIndex / RepositoryModelLoad / Unload) through tritonclient.

One server in `--model-control-mode explicit` for the module, on a copy of the session's
repository; the shared server (mode `none`) refuses explicit loads as Triton does.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.serving.helpers import MODEL, QUEUED, TAMPERED, ServerProcess, cnnzoo

X = np.random.default_rng(2).standard_normal((1, 1, 32, 32)).astype(np.float32)


def infer(client: triton.InferenceServerClient, model: str) -> triton.InferResult:
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    return client.infer(model, [tensor])


def failure(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


@pytest.fixture(scope="module")
def explicit(repository: Path, tmp_path_factory) -> Iterator[tuple[ServerProcess, Path]]:
    repo = tmp_path_factory.mktemp("explicit") / "models"
    shutil.copytree(repository, repo)
    process = ServerProcess(
        repo, repo.parent / "server.log", "--model-control-mode", "explicit", "--load-model", MODEL
    ).wait_ready()
    yield process, repo
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


def index(client: triton.InferenceServerClient) -> dict[str, list[tuple[str, str]]]:
    rows = client.get_model_repository_index(as_json=True).get("models", [])
    return _table(rows)


def ready_index(target: str) -> dict[str, list[tuple[str, str]]]:
    """RepositoryIndex with `ready: true` (tritonclient's wrapper does not pass it), through
    tritonclient's own generated stub."""
    import grpc
    from google.protobuf.json_format import MessageToDict
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
    return _table(MessageToDict(response).get("models", []))


def _table(rows: list[dict]) -> dict[str, list[tuple[str, str]]]:
    table: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        table.setdefault(row["name"], []).append((row.get("version", ""), row.get("state", "")))
    return table


def test_explicit_mode_loads_only_what_is_asked_for(explicit):
    server, _ = explicit
    client = triton.InferenceServerClient(server.target)
    assert "model_repository" in client.get_server_metadata(as_json=True)["extensions"]
    assert index(client) == {MODEL: [("1", "READY")], QUEUED: [("", "")], TAMPERED: [("", "")]}
    assert ready_index(server.target) == {MODEL: [("1", "READY")]}
    assert not client.is_model_ready(QUEUED)

    client.load_model(QUEUED)
    assert client.is_model_ready(QUEUED)
    assert infer(client, QUEUED).as_numpy("logits").shape == (1, 10)
    health = cnnzoo("health", "--server", server.target, "--service", QUEUED)
    assert health.stdout.strip() == "SERVING"

    client.unload_model(QUEUED)
    assert not client.is_model_ready(QUEUED)
    err = failure(lambda: infer(client, QUEUED))
    assert err.status() == "StatusCode.UNAVAILABLE" and "unloaded" in err.message()
    (row,) = client.get_model_repository_index(as_json=True)["models"][1:2]
    assert row == {"name": QUEUED, "state": "UNAVAILABLE", "reason": "unloaded"}
    health = cnnzoo("health", "--server", server.target, "--service", QUEUED)
    assert health.returncode == 1 and health.stdout.strip() == "NOT_SERVING"
    client.unload_model(QUEUED)  # unloading what is not loaded: fine, as in Triton
    assert infer(client, MODEL).as_numpy("logits").shape == (1, 10)  # the others serve on
    client.close()


def test_a_load_that_fails_says_why_and_the_index_keeps_the_reason(explicit):
    server, _ = explicit
    client = triton.InferenceServerClient(server.target)
    err = failure(lambda: client.load_model(TAMPERED))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"load failed for model '{TAMPERED}'" in err.message() and "sha256" in err.message()
    rows = [r for r in client.get_model_repository_index(as_json=True)["models"]]
    (tampered,) = [r for r in rows if r["name"] == TAMPERED]
    assert tampered["state"] == "UNAVAILABLE" and "sha256" in tampered["reason"]
    for name, code in (("nope", "NOT_FOUND"), ("../../etc", "NOT_FOUND")):
        assert failure(lambda n=name: client.load_model(n)).status() == f"StatusCode.{code}"
    err = failure(lambda: client.load_model(MODEL, config=json.dumps({"max_batch_size": 4})))
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "'config'" in err.message()
    assert client.is_model_ready(MODEL)
    client.close()


def test_load_picks_up_a_new_version(explicit):
    server, repo = explicit
    shutil.copytree(repo / MODEL / "1", repo / MODEL / "2")
    client = triton.InferenceServerClient(server.target)
    before = infer(client, MODEL).as_numpy("logits")
    client.load_model(MODEL)
    assert client.get_model_metadata(MODEL, as_json=True)["versions"] == ["2"]
    np.testing.assert_array_equal(infer(client, MODEL).as_numpy("logits"), before)
    client.close()


def test_mode_none_refuses_load_and_unload_as_triton_does(server):
    client = triton.InferenceServerClient(server.target)
    for call in (lambda: client.load_model(MODEL), lambda: client.unload_model(MODEL)):
        err = failure(call)
        assert err.status() == "StatusCode.UNAVAILABLE"
        assert "--model-control-mode none" in err.message()
    assert client.is_model_ready(MODEL)
    assert {r["name"] for r in client.get_model_repository_index(as_json=True)["models"]} >= {
        MODEL,
        TAMPERED,
    }
    client.close()


def test_control_flags_that_contradict_each_other_are_refused(repository):
    for args, fragment in (
        (["--model-control-mode", "none", "--poll-seconds", "5"], "--model-control-mode poll"),
        (["--load-model", MODEL], "--load-model needs --model-control-mode explicit"),
        (["--model-control-mode", "explicit", "--load-model", "nope"], "'nope' is not in"),
    ):
        result = cnnzoo("serve", "--repository", str(repository), "--port", "0", *args)
        assert result.returncode == 2 if "nope" not in fragment else 3, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("cnnzoo serve: error:") and fragment in line, line
