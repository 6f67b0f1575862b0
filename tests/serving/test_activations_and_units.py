"""The routes the explorer calls, without a browser, on the session's shared server: every
layer's maps (`.../activations`) against PyTorch's forward hooks, unit projections through
Explain (REST and gRPC) against `cnnzoo.interpret.explain.project_unit`, their refusals, and the
explorer's page switched off or restricted."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo import zoo
from cnnzoo.interpret.explain import project_unit
from cnnzoo.interpret.forward import forward_to
from cnnzoo.protos import zoo_pb2
from tests.serving.helpers import MODEL, ServerProcess
from tests.serving.test_rest import request

ROOT = Path(__file__).resolve().parents[2]
DIGIT = ROOT / "examples" / "digits" / "7" / "test-00000.png"


@pytest.fixture(scope="module")
def reference():
    x = torch.from_numpy(zoo.get_entry(MODEL).preprocess.apply(Image.open(DIGIT)))[None]
    return zoo.build_model(MODEL, weights="default"), x


def _post_json(server, path: str) -> tuple[int, dict]:
    status, _, body = request(server, "POST", path, DIGIT.read_bytes())
    return status, json.loads(body)


def test_every_layer_s_maps_match_pytorch(server, reference) -> None:
    model, x = reference
    status, answer = _post_json(server, f"/v2/models/{MODEL}/activations")
    assert status == 200, answer
    names = [layer["name"] for layer in answer["layers"]]
    assert names[:3] == ["features.c1", "features.relu1", "features.s2"]
    with torch.no_grad():
        expected = forward_to(model, names, x, lambda _, t: t.clone())
    for layer in answer["layers"]:
        values = expected[layer["name"]][0].reshape(layer["shape"][0], -1).numpy()
        peaks = values.max(axis=1)
        np.testing.assert_allclose(layer["peaks"], peaks, rtol=1e-4, atol=1e-4)
        assert peaks[layer["order"][0]] == pytest.approx(peaks.max(), rel=1e-4)
        strip = Image.open(io.BytesIO(base64.b64decode(layer["png"])))
        channels, height, width = ([*layer["shape"], 1, 1])[:3]
        assert strip.size == (channels * width, height) and strip.mode == "L"
    c3 = next(layer for layer in answer["layers"] if layer["name"] == "features.c3")
    assert c3["receptive_field"] == {"size": [14, 14], "stride": [2, 2], "offset": [0, 0]}
    seen = Image.open(io.BytesIO(base64.b64decode(answer["input_png"])))
    assert seen.size == (32, 32)  # LeNet-5's 28 px digit padded by 2, as the model sees it
    status, only = _post_json(server, f"/v2/models/{MODEL}/activations?layers=features.c3")
    assert [layer["name"] for layer in only["layers"]] == ["features.c3"]
    status, missing = _post_json(server, f"/v2/models/{MODEL}/activations?layers=nope")
    assert status == 404 and "features.c3" in missing["error"]


def test_a_unit_through_explain_is_the_pytorch_projection(server, zoo_stub, reference) -> None:
    model, x = reference
    expected = project_unit(model, x, "features.c3", 5, rule="deconvnet")
    status, answer = _post_json(
        server, f"/v2/models/{MODEL}/explain?method=deconvnet-unit&layer=features.c3&channel=5"
    )
    assert status == 200, answer
    assert tuple(answer["unit_position"]) == expected.position
    assert answer["unit_activation"] == pytest.approx(expected.activation, rel=1e-5)
    assert base64.b64decode(answer["png"]) == expected.png
    at = zoo_stub.Explain(
        zoo_pb2.ExplainRequest(
            model=MODEL, image=DIGIT.read_bytes(), method="guided-backprop-unit",
            layer="features.c3", channel=5, position=[2, 3],
        ),
        timeout=60,
    )  # fmt: skip
    guided = project_unit(model, x, "features.c3", 5, (2, 3), rule="guided-backprop")
    assert list(at.unit_position) == [2, 3]
    assert at.unit_activation == pytest.approx(guided.activation, rel=1e-5)
    summed = guided.projection.sum(axis=0)
    mine = np.asarray(at.attribution, np.float32).reshape(summed.shape)
    assert np.abs(mine - summed).max() <= 1e-5 * np.abs(summed).max()


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("method=deconvnet-unit&layer=features.c3&channel=16", "16 channels"),
        ("method=deconvnet-unit&layer=features.c3&channel=1&position=10,0", "10x10 map"),
        ("method=deconvnet-unit&layer=features.c3", "needs a channel"),
        ("method=deconvnet-unit&layer=features.c3&channel=1&target=3", "no target"),
        ("method=deconvnet-unit&layer=flatten&channel=1&position=0,0", "flat"),
        ("method=grad-cam&channel=1", "unit methods"),
        ("method=deconvnet-unit&layer=features.c3&channel=1&position=a", "Y,X"),
    ],
)
def test_unit_requests_out_of_bounds_are_refused(server, query: str, said: str) -> None:
    status, answer = _post_json(server, f"/v2/models/{MODEL}/explain?{query}")
    assert status == 400 and said in answer["error"], answer


def test_the_explorer_off_or_restricted(repository, tmp_path: Path) -> None:
    off = ServerProcess(repository, tmp_path / "off.log", "--explorer", "off").wait_ready()
    try:
        assert request(off, "GET", "/explorer/")[0] == 404
        assert _post_json(off, f"/v2/models/{MODEL}/activations")[0] == 200  # the API stays
    finally:
        assert off.stop() == 0
    restricted = ServerProcess(
        repository, tmp_path / "restricted.log",
        "--http-restricted-api", "explorer:explorer-key=env:EXPLORER_KEY",
        env={"EXPLORER_KEY": "s3cret"},
    ).wait_ready()  # fmt: skip
    try:
        status, _, body = request(restricted, "GET", "/explorer/")
        assert status == 403 and b"explorer-key" in body
        status, _, page = request(
            restricted, "GET", "/explorer/", headers={"explorer-key": "s3cret"}
        )
        assert status == 200 and b"explorer.js" in page
        assert request(restricted, "GET", "/explorer/static/explorer.js")[0] == 403
    finally:
        assert restricted.stop() == 0
