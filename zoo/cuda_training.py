"""How a model trains on CUDA: memory layout, precision, fused optimizer steps, compilation.

A small CNN on a modern GPU is limited by how fast kernels are launched, not by arithmetic, so
what pays is fewer launches (`torch.compile` fuses batch norm, ReLU and adds; `reduce-overhead`
also replays each step as a CUDA graph) more than faster ones. bf16 autocast halves the bytes
moved; its casts are extra launches in eager mode. Which combination is fastest depends on the
GPU and the model, so each is a switch, and `bench/train_speed.py` measures them side by side.

The switches come from `CNNZOO_CUDA_TRAINING` (comma-separated `key=value`, e.g.
`bf16=0,compile=reduce-overhead`), so `cnnzoo train --device cuda` and the benchmark use the same
code; unset keys keep the defaults below. They change how fast a run goes, not what it computes,
except bf16, which rounds the forward pass (batch norm and the loss stay float32). The model card
records the settings a run used (`hardware.cuda_training`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from cnnzoo.errors import InvalidInput

__all__ = ["COMPILE_MODES", "ENVIRONMENT_VARIABLE", "CudaTraining", "prepare_cuda_model"]

ENVIRONMENT_VARIABLE = "CNNZOO_CUDA_TRAINING"
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class CudaTraining:
    """CUDA training switches.

    Args:
        device_data: keep MNIST/CIFAR-10 on the GPU and augment there
            (`cnnzoo.zoo.device_data`) instead of `DataLoader` worker processes.
        channels_last: NHWC convolutions (cuDNN's fast path).
        bf16: bf16 autocast of the training forward pass (evaluation stays float32, so the
            card's accuracy is the float32 weights').
        fused: fused optimizer steps (one kernel for all parameters instead of a few per
            parameter).
        compile: `torch.compile` mode, or "none".
    """

    device_data: bool = True
    channels_last: bool = True
    bf16: bool = True
    fused: bool = True
    compile: str = "none"

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise InvalidInput(
                f"{ENVIRONMENT_VARIABLE}: compile must be one of {', '.join(COMPILE_MODES)}, "
                f"got {self.compile!r}"
            )

    @classmethod
    def parse(cls, text: str) -> CudaTraining:
        """`key=value,...` (the environment variable's format) over the defaults."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key, value = key.strip().replace("-", "_"), value.strip().lower()
            if not sep or key not in known:
                raise InvalidInput(
                    f"{ENVIRONMENT_VARIABLE}: expected key=value with keys "
                    f"{', '.join(known)}, got {item!r}"
                )
            if key == "compile":
                values[key] = value
            elif value in _TRUE or value in _FALSE:
                values[key] = value in _TRUE
            else:
                raise InvalidInput(f"{ENVIRONMENT_VARIABLE}: {key} must be 1 or 0, got {value!r}")
        return cls(**values)

    @classmethod
    def from_environment(cls) -> CudaTraining:
        return cls.parse(os.environ.get(ENVIRONMENT_VARIABLE, ""))

    def to_text(self) -> str:
        """The environment variable's value for these settings."""
        return ",".join(
            f"{k}={v if isinstance(v, str) else int(v)}" for k, v in asdict(self).items()
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_cuda_model(model: Any, settings: CudaTraining | None = None) -> CudaTraining:
    """Apply `settings` (default: the environment's) to `model` in place and return them.

    The model stays the same `nn.Module` (its state dict, hooks and parameters are untouched),
    so checkpoints, the optimizer and evaluation see no difference.
    """
    import torch

    settings = settings or CudaTraining.from_environment()
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    if settings.bf16:
        _autocast_in_training(model)
    if settings.compile != "none":
        # dynamic=False: one graph per batch shape (the full batch, the last, evaluation's)
        model.compile(mode=settings.compile, dynamic=False)
    return settings


def _autocast_in_training(model: Any) -> None:
    """Run `model`'s forward under bf16 autocast while it trains, returning float32 logits."""
    import torch

    plain = model.forward

    @functools.wraps(plain)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if not model.training:
            return plain(*args, **kwargs)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return plain(*args, **kwargs).float()

    model.forward = forward
