"""Where the GPU tests run: CUDA, or the CPU in a rehearsal (see conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.gpu.repository import MODELS


@dataclass(frozen=True)
class Target:
    """Where the tests run: CUDA, or the CPU in a rehearsal."""

    device: str  # "cuda" | "cpu"
    provider: str  # the ONNX Runtime execution provider the server reports

    @property
    def rehearsal(self) -> bool:
        return self.device == "cpu"

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for m in MODELS if not (self.rehearsal and m == "resnet50-imagenet"))

    def only_on_a_gpu(self, what: str) -> None:
        if self.rehearsal:
            pytest.skip(f"rehearsal on the CPU: {what} needs a GPU")
