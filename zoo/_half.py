"""The fp16 export wrapper (imports torch, so `cnnzoo.zoo.export` loads it only when needed)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class HalfPrecision(nn.Module):
    """FP32 in, FP16 inside, FP32 out, so an fp16 export keeps the fp32 config.pbtxt."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(model).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.half()).float()
