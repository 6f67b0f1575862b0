"""Model control over REST (Triton's /v2/repository endpoints) through tritonclient.http, and the
endpoints this server does not implement answering 501 instead of a silent 404.

One server in `--model-control-mode explicit` on a copy of the session's repository; the gRPC
twin of these checks is tests/serving/test_model_control.py.
"""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serving.helpers import MODEL, QUEUED, TAMPERED, ServerProcess

X = np.random.default_rng(5).standard_normal((1, 1, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def explicit(repository: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("rest-explicit") / "models"
    shutil.copytree(repository, repo)
    process = ServerProcess(
        repo, repo.parent / "server.log", "--model-control-mode", "explicit", "--load-model", MODEL
    ).wait_ready()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(scope="module")
def client(explicit) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{explicit.http_port}")
    yield client
    client.close()


def infer(client: httpclient.InferenceServerClient, model: str):
    tensor = httpclient.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    return client.infer(model, [tensor])


def states(client) -> dict[str, str]:
    return {row["name"]: row.get("state", "") for row in client.get_model_repository_index()}


def raw(server, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        connection.close()


def test_index_load_and_unload_over_rest(client):
    assert states(client) == {MODEL: "READY", QUEUED: "", TAMPERED: ""}
    with pytest.raises(InferenceServerException):
        infer(client, QUEUED)
    client.load_model(QUEUED)
    assert client.is_model_ready(QUEUED)
    assert infer(client, QUEUED).as_numpy("logits").shape == (1, 10)
    assert states(client)[QUEUED] == "READY"
    client.unload_model(QUEUED)
    assert not client.is_model_ready(QUEUED)
    assert states(client)[QUEUED] in ("UNAVAILABLE", "")


def test_a_failed_load_says_why(client):
    with pytest.raises(InferenceServerException) as info:
        client.load_model(TAMPERED)
    assert "sha256" in info.value.message()
    row = next(r for r in client.get_model_repository_index() if r["name"] == TAMPERED)
    assert "sha256" in row.get("reason", ""), row


def test_configuration_overrides_are_refused_not_ignored(client):
    with pytest.raises(InferenceServerException) as info:
        client.load_model(MODEL, config='{"max_batch_size": 8}')
    assert "are not supported" in info.value.message()


def test_the_repository_may_be_named_and_bad_bodies_are_400(explicit):
    name = explicit.log_path.parent.joinpath("models").name
    status, rows = raw(explicit, "POST", f"/v2/repository/{name}/index", b'{"ready": true}')
    assert status == 200 and [r["name"] for r in rows] == [MODEL]
    assert raw(explicit, "POST", "/v2/repository/elsewhere/index")[0] == 404
    status, answer = raw(explicit, "POST", "/v2/repository/index", b'{"ready": 1}')
    assert status == 400 and "true or false" in answer["error"]
    status, answer = raw(explicit, "POST", f"/v2/repository/models/{MODEL}/load", b"[]")
    assert status == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/trace/setting"),
        ("POST", "/v2/trace/setting"),
        ("GET", f"/v2/models/{MODEL}/trace/setting"),
        ("GET", "/v2/logging"),
        ("POST", "/v2/logging"),
    ],
)
def test_trace_and_logging_answer_not_implemented(explicit, method, path):
    status, answer = raw(explicit, method, path, b"{}" if method == "POST" else b"")
    assert status == 501 and "not implemented by this server" in answer["error"]
