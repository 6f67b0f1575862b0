"""Fixtures of the GPU tests (`pytest -m gpu`): where CUDA is missing they skip with the reason.

Two kinds of CUDA are asked for separately: ONNX Runtime's CUDA execution provider (serving)
and PyTorch's (training, jobs, explanations). Each fixture is session-scoped, so a test skips
before any repository is exported. The repositories come from `CNNZOO_GPU_REPOSITORY` when it
holds them (scripts/gpu-check.sh exports them once), else they are exported here.

Rehearsal: with `CNNZOO_GPU_REHEARSAL=1` the tests run on the CPU where CUDA is missing (the
CPU provider and torch's CPU device stand in; what only a GPU can show, a hidden device or a
node refused on the CPU, still skips; ResNet-50 is left out, too slow to warm up on a CPU), so
their code has run once before the GPU run that matters. It takes minutes, not CI's seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.gpu.repository import ENVIRONMENT_VARIABLE, build, complete
from tests.gpu.target import Target

REHEARSAL = os.environ.get("CNNZOO_GPU_REHEARSAL") == "1"


@pytest.fixture(scope="session")
def ort_cuda() -> Target:
    """ONNX Runtime's CUDA execution provider works here, or the test skips saying why not."""
    from cnnzoo.serving.runtime import CPU, CUDA, cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason is None:
        return Target("cuda", CUDA)
    if REHEARSAL:
        return Target("cpu", CPU)
    pytest.skip(f"no CUDA for onnxruntime: {reason}")


@pytest.fixture(scope="session")
def torch_cuda() -> Target:
    """PyTorch sees a CUDA device, or the test skips saying why not."""
    import torch

    from cnnzoo.serving.runtime import CPU, CUDA

    if torch.cuda.is_available():
        return Target("cuda", CUDA)
    if REHEARSAL:
        return Target("cpu", CPU)
    built = torch.version.cuda
    why = f"torch {torch.__version__} is a CPU build" if built is None else "no device"
    pytest.skip(f"no CUDA for PyTorch: {why}")


@pytest.fixture(scope="session")
def gpu_repositories(ort_cuda: Target, tmp_path_factory) -> dict[str, Path]:
    """`{"fp32": repository, "fp16": repository}` with lenet5-mnist, resnet20-cifar10 and
    resnet50-imagenet (see tests/gpu/repository.py)."""
    given = os.environ.get(ENVIRONMENT_VARIABLE)
    if given and complete(Path(given), ort_cuda.models):
        return {p: Path(given) / p for p in ("fp32", "fp16")}
    return build(tmp_path_factory.mktemp("gpu-repositories"), ort_cuda.models)
