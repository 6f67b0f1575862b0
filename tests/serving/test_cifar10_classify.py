"""The shipped CIFAR-10 models, exported by `cnnzoo export` and served: `Classify` on real
CIFAR-10 test images sent as PNG bytes answers what PyTorch answers, and mostly right."""

from __future__ import annotations

import concurrent.futures
import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch

from cnnzoo import zoo
from cnnzoo.protos import zoo_pb2, zoo_pb2_grpc
from cnnzoo.zoo.datasets import get_dataset
from tests.serving.helpers import ROOT, ServerProcess, cnnzoo, png_bytes

MODELS = ("resnet20-cifar10", "alexnet-cifar10")
N_IMAGES = 200  # the first 200 test images, as PNG files


@pytest.fixture(scope="module")
def cifar_stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zoo_pb2_grpc.ZooStub]:
    repository = tmp_path_factory.mktemp("cifar-repository")
    # the two exports at once, one per core (each writes only its own model folder)
    with concurrent.futures.ThreadPoolExecutor(len(MODELS)) as pool:
        exports = pool.map(
            lambda name: cnnzoo(
                "export", name, "--repository", str(repository), "--explanations", "none"
            ),
            MODELS,
        )
        for done in exports:
            assert done.returncode == 0, done.stderr
    log = tmp_path_factory.mktemp("cifar-logs") / "server.log"
    server = ServerProcess(repository, log).wait_ready()
    try:
        with grpc.insecure_channel(server.target) as channel:
            yield zoo_pb2_grpc.ZooStub(channel)
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def test_pngs(data_dir) -> tuple[list[bytes], list[int]]:
    test_set = get_dataset("cifar10", "test")
    images = [png_bytes(test_set.data[i]) for i in range(N_IMAGES)]
    return images, test_set.targets[:N_IMAGES]


def _torch_top1(name: str, images: list[bytes]) -> list[int]:
    """What the shipped PyTorch weights answer for the same PNG bytes (decoded the same way)."""
    from PIL import Image

    entry = zoo.get_entry(name)
    model = zoo.build_model(name, weights=entry.weights_file).eval()
    batch = np.stack([entry.preprocess.apply(Image.open(io.BytesIO(data))) for data in images])
    with torch.no_grad():
        return model(torch.from_numpy(batch)).argmax(1).tolist()


@pytest.mark.parametrize("name", MODELS)
def test_classify_cifar10_test_pngs_like_pytorch(name, cifar_stub, test_pngs):
    images, targets = test_pngs
    response = cifar_stub.Classify(zoo_pb2.ClassifyRequest(model=name, images=images, top_k=1))
    assert response.model == name and response.version == "1"
    served = [result.predictions[0].index for result in response.results]
    labels = zoo.get_entry(name).labels
    assert [r.predictions[0].label for r in response.results] == [labels[i] for i in served]
    # ONNX Runtime and PyTorch agree image for image (up to a near-tie or two)
    reference = _torch_top1(name, images)
    assert sum(a != b for a, b in zip(served, reference, strict=True)) <= 1
    accuracy = np.mean(np.array(served) == np.array(targets))
    card_top1 = zoo.get_entry(name).card()["metrics"]["top1"]
    assert accuracy >= card_top1 - 0.06, f"{name}: {accuracy:.3f} on {N_IMAGES} test images"


def test_classify_the_example_cifar10_images(cifar_stub):
    files = sorted((ROOT / "examples" / "cifar10").glob("*/*.png"))
    assert len(files) == 10
    response = cifar_stub.Classify(
        zoo_pb2.ClassifyRequest(
            model="resnet20-cifar10", images=[p.read_bytes() for p in files], top_k=3
        )
    )
    pairs = zip(files, response.results, strict=True)
    correct = [result.predictions[0].label == path.parent.name for path, result in pairs]
    assert sum(correct) >= 7
    for result in response.results:
        probabilities = [p.probability for p in result.predictions]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001


def test_explain_says_when_the_map_cannot_depend_on_the_input(cifar_stub):
    from PIL import Image

    from cnnzoo.interpret.explain import explain

    cat = next((ROOT / "examples" / "cifar10" / "cat").glob("*.png"))
    for name, method, warned in [
        ("resnet20-cifar10", "deconvnet", True),  # no max-pooling: the same map for every image
        ("resnet20-cifar10", "guided-backprop", False),
        ("alexnet-cifar10", "deconvnet", False),
        ("resnet20-cifar10", "grad-cam", False),
    ]:
        request = zoo_pb2.ExplainRequest(model=name, image=cat.read_bytes(), method=method)
        got = cifar_stub.Explain(request, timeout=60)
        entry = zoo.get_entry(name)
        x = torch.from_numpy(entry.preprocess.apply(Image.open(cat)))[None]
        expected = explain(zoo.build_model(name, weights="default"), x, method)
        # the same warnings, the server's naming the served model (PyTorch's: the class)
        served_names = [w.replace(name, type(zoo.build_model(name)).__name__) for w in got.warnings]
        assert served_names == list(expected.warnings) and bool(got.warnings) is warned
        if warned:
            assert "cannot depend on the input" in got.warnings[0]
        np.testing.assert_allclose(
            np.asarray(got.attribution, np.float32).reshape(32, 32),
            expected.attribution,
            rtol=1e-4,
            atol=1e-6,
        )
