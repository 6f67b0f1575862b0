"""Explain on a `--device cuda` server equals Explain on a `--device cpu` server, through the
public Explain RPC (so it holds however the server computes explanations)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnzoo.interpret.methods import METHODS
from cnnzoo.serving.client import ZooClient
from tests.serving.helpers import ROOT, ServerProcess

IMAGES = {
    "lenet5-mnist": sorted((ROOT / "examples" / "digits").glob("*/*.png"))[::7],
    "resnet20-cifar10": sorted((ROOT / "examples" / "cifar10").glob("*/*.png"))[::3],
}
TOLERANCE = 1e-4  # of the map's largest value (maps of trained models reach about 1)


@pytest.mark.gpu
def test_explanations_on_cuda_equal_the_cpus(ort_cuda, torch_cuda, gpu_repositories, tmp_path):
    repository = gpu_repositories["fp32"]
    models = [arg for model in IMAGES for arg in ("--model", model)]
    servers = {
        name: ServerProcess(
            repository, tmp_path / f"{name}.log", "--device", device, *models
        ).wait_ready(timeout=180)
        for name, device in (("cuda", ort_cuda.device), ("cpu", "cpu"))
    }
    try:
        with ZooClient(servers["cuda"].target) as cuda, ZooClient(servers["cpu"].target) as cpu:
            compared = 0
            for model, images in IMAGES.items():
                for path in images:
                    image = path.read_bytes()
                    for method in METHODS:
                        on_gpu = cuda.explain(image, model, method)
                        on_cpu = cpu.explain(image, model, method)
                        where = f"{model} {path.name} {method}"
                        assert (on_gpu.target, on_gpu.label) == (on_cpu.target, on_cpu.label), where
                        assert on_gpu.score == pytest.approx(on_cpu.score, abs=1e-4), where
                        assert list(on_gpu.shape) == list(on_cpu.shape), where
                        a, b = np.asarray(on_gpu.attribution), np.asarray(on_cpu.attribution)
                        scale = max(1.0, float(np.abs(b).max()))
                        assert float(np.abs(a - b).max()) <= TOLERANCE * scale, where
                        assert list(on_gpu.warnings) == list(on_cpu.warnings), where
                        compared += 1
        assert compared == len(METHODS) * sum(len(i) for i in IMAGES.values())
    finally:
        for server in servers.values():
            server.stop()
