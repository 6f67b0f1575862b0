"""config.pbtxt scheduling fields honoured as Triton honours them, through a real `cnnzoo serve`
and tritonclient: `version_policy` (latest N, all, specific; a new version under `poll`),
`preferred_batch_size` (a batch goes as soon as it reaches one), and a model folder with only
`1/model.onnx` (no config.pbtxt: listed, completed from the graph, served).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.serving.helpers import MODEL, ServerProcess, add_version, copy_model, eventually

PREFERRED_DELAY_S = 2.0


def _policy(kind: str):
    def edit(config) -> None:
        if kind == "all":
            config.version_policy.all.SetInParent()
        elif kind == "latest2":
            config.version_policy.latest.num_versions = 2
        else:
            config.version_policy.specific.versions.extend([1, 3])

    return edit


def _preferred(config) -> None:
    config.dynamic_batching.preferred_batch_size.append(4)


@pytest.fixture(scope="module")
def root(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scheduling")
    shutil.copytree(repository / MODEL, root / MODEL)
    for name in ("all", "latest2", "specific"):
        copy_model(root, MODEL, name, edit=_policy(name))
        for version in (2, 3):
            add_version(root / name, 1, version)
    copy_model(
        root, MODEL, "preferred", max_queue_delay_us=int(PREFERRED_DELAY_S * 1e6), edit=_preferred
    )
    (root / "bare" / "1").mkdir(parents=True)
    shutil.copy(repository / MODEL / "1" / "model.onnx", root / "bare" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def server(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    process = ServerProcess(
        root, log, "--model-control-mode", "poll", "--poll-seconds", "0.5"
    ).wait_ready()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.target) as client:
        yield client


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 1, 32, 32), dtype=np.float32)


def _infer(client, model: str, version: str = "", seed: int = 0):
    data = _image(seed)
    inputs = [triton.InferInput("input", list(data.shape), "FP32")]
    inputs[0].set_data_from_numpy(data)
    return client.infer(model, inputs, model_version=version)


def _ready_versions(client, model: str) -> list[str]:
    index = client.get_model_repository_index(as_json=True).get("models", [])
    return sorted(
        (e["version"] for e in index if e["name"] == model and e.get("state") == "READY"), key=int
    )


@pytest.mark.parametrize(
    ("model", "served"),
    [("all", ["1", "2", "3"]), ("latest2", ["2", "3"]), ("specific", ["1", "3"])],
)
def test_the_version_policy_chooses_the_versions_served(client, model, served):
    assert _ready_versions(client, model) == served
    assert client.get_model_metadata(model, as_json=True)["versions"] == served[::-1]
    for version in ("1", "2", "3"):
        assert client.is_model_ready(model, version) == (version in served)
        if version in served:
            assert _infer(client, model, version).get_response().model_version == version
        else:
            with pytest.raises(InferenceServerException, match="no version"):
                _infer(client, model, version)
    # A request without a version gets the newest, as in Triton.
    assert _infer(client, model).get_response().model_version == served[-1]
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    assert sorted(s["version"] for s in stats) == served


def test_a_new_version_under_poll_replaces_the_oldest_of_latest_n(client, root):
    add_version(root / "latest2", 1, 4)
    eventually(
        lambda: _ready_versions(client, "latest2") == ["3", "4"],
        lambda: f"versions 3 and 4 to serve; index: {_ready_versions(client, 'latest2')}",
        timeout=30,
    )
    assert _infer(client, "latest2", "3").get_response().model_version == "3"
    with pytest.raises(InferenceServerException, match="no version"):
        _infer(client, "latest2", "2")


def test_a_preferred_batch_size_goes_without_waiting_out_the_queue_delay(client):
    """Four concurrent one-image requests reach preferred_batch_size 4: they run together at
    once, not after the 2 s max_queue_delay; a fifth, sent with them, waits the delay out."""
    answered: dict[int, float] = {}
    started = time.monotonic()

    def one(seed: int) -> None:
        _infer(client, "preferred", seed=seed)
        answered[seed] = time.monotonic() - started

    threads = [threading.Thread(target=one, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(answered.values()) < PREFERRED_DELAY_S / 2, answered
    stats = client.get_inference_statistics("preferred", as_json=True)["model_stats"][0]
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    assert sizes == {4: 1}, sizes

    _infer(client, "preferred", seed=9)
    assert time.monotonic() - started >= PREFERRED_DELAY_S * 0.9  # alone: waited the delay


def test_a_folder_with_only_a_version_and_its_model_onnx_is_listed_and_served(
    client, root, repository
):
    assert _ready_versions(client, "bare") == ["1"]
    config = client.get_model_config("bare", as_json=True)["config"]
    assert config["name"] == "bare"
    assert config["platform"] == "onnxruntime_onnx"
    assert [i["name"] for i in config["input"]] == ["input"]
    assert [o["name"] for o in config["output"]] == ["logits"]
    bare = _infer(client, "bare", seed=3).as_numpy("logits")
    reference = _infer(client, MODEL, seed=3).as_numpy("logits")
    np.testing.assert_allclose(bare, reference, rtol=1e-6, atol=1e-6)
    assert not (root / "bare" / "config.pbtxt").exists()  # nothing written into the folder
