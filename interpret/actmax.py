"""Activation maximisation: an input optimised from noise to excite one unit (Erhan et al. 2009,
"Visualizing higher-layer features of a deep network"), regularised as in Yosinski et al. 2015's
deep-visualization toolbox ("Understanding neural networks through deep visualization",
https://arxiv.org/abs/1506.06579), the tool that shows these images beside the dataset's top-k
and the deconvnet projections of the same channel.

Gradient ascent on the input, in the model's normalised input space. Each step, in this order:

    jitter          shift the image by up to `jitter` pixels (the same random shift for every
                    unit of a step) before the forward pass, so no pattern relies on exact pixels
    ascent          x += learning_rate * g / rms(g), the unit's gradient, normalised per image
    L2 decay        x *= 1 - l2_decay                          (pulls towards the dataset mean)
    blur            every `blur_every` steps a Gaussian blur of width `blur_sigma` px
    small-norm clip pixels whose norm over channels is below the `clip_percentile`-th
                    percentile of the image's become 0 (the mean colour)
    range           x stays within the values real images take ([0, 1] before normalising)

Units are batched: each gets its own image in the batch and the model runs in eval mode, so a
unit's image does not depend on which units share its batch; the starting noise is seeded per
unit and the jitter per step, so the result is the same batched or one unit at a time (to the bit
in float64; in float32 the batched kernels round differently and a long ascent amplifies that,
so the images show the same thing without being bit-identical).

A unit behind a ReLU that is zero for the starting noise has no gradient and stays zero; a
convolution's output (before its ReLU) always has one, which is why jobs default to those.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from cnnzoo.errors import InvalidInput
from cnnzoo.interpret.forward import forward_to
from cnnzoo.interpret.rules import left_as_found

__all__ = ["Regularisers", "Synthetic", "maximise_units"]


@dataclass(frozen=True)
class Regularisers:
    """The optimisation's settings (see the module docstring); the defaults suit 32 px inputs."""

    steps: int = 200
    learning_rate: float = 0.05
    l2_decay: float = 0.01
    blur_every: int = 4
    blur_sigma: float = 0.5
    jitter: int = 2
    clip_percentile: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.blur_every < 0 or self.jitter < 0:
            raise InvalidInput("steps must be >= 1, blur_every and jitter >= 0")
        if not 0 <= self.l2_decay < 1 or not 0 <= self.clip_percentile < 100:
            raise InvalidInput("l2_decay must be in [0, 1) and clip_percentile in [0, 100)")
        if self.learning_rate < 0 or self.blur_sigma < 0:
            raise InvalidInput("learning_rate and blur_sigma must not be negative")


@dataclass(frozen=True)
class Synthetic:
    """What `maximise_units` made.

    Attributes:
        images: `[U, C, H, W]` the optimised inputs, normalised like the model's inputs.
        start: `[U]` each unit's activation for its starting noise.
        activation: `[U]` each unit's activation for its optimised image.
    """

    images: torch.Tensor
    start: torch.Tensor
    activation: torch.Tensor


def _unit_seed(seed: int, layer: str, unit: tuple[int, int, int]) -> int:
    """A seed for one unit's starting noise that does not depend on its batch."""
    digest = hashlib.sha256(f"{seed}/{layer}/{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _unit_values(out: torch.Tensor, units: Sequence[tuple[int, int, int]]) -> torch.Tensor:
    rows = torch.arange(len(units), device=out.device)
    channels = torch.tensor([u[0] for u in units], device=out.device)
    if out.dim() == 2:
        return out[rows, channels]
    ys = torch.tensor([u[1] for u in units], device=out.device)
    xs = torch.tensor([u[2] for u in units], device=out.device)
    return out[rows, channels, ys, xs]


def maximise_units(
    model: nn.Module,
    layer: str,
    units: Sequence[tuple[int, int, int]],
    input_shape: Sequence[int],
    *,
    regularisers: Regularisers = Regularisers(),
    seed: int = 0,
    batch_size: int = 64,
    bounds: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Synthetic:
    """Optimise one input per unit of `layer` to maximise that unit.

    Args:
        model: the network (run in eval mode with frozen parameters; restored afterwards).
        layer: a module that runs once per forward pass (the forward stops there).
        units: (channel, y, x) per unit; y = x = 0 for a flat layer.
        input_shape: (C, H, W) of one input.
        regularisers: the optimisation's settings.
        seed: seeds the starting noise (per unit) and the jitter (per step).
        batch_size: units optimised together.
        bounds: per-channel (low, high) of normalised inputs (from the preprocessing's mean and
            std); None leaves the values unbounded.

    Raises:
        InvalidInput: a unit outside the layer's output, a non-positive batch size.
        UnsupportedModel: a layer that runs more than once per forward pass.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be at least 1, got {batch_size}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    channels = int(input_shape[0])
    low = high = None
    if bounds is not None:
        low = torch.tensor(bounds[0], dtype=dtype, device=device).view(1, channels, 1, 1)
        high = torch.tensor(bounds[1], dtype=dtype, device=device).view(1, channels, 1, 1)
    reg = regularisers
    images, starts, finals = [], [], []
    with torch.inference_mode(False), torch.enable_grad(), left_as_found(model):
        for begin in range(0, len(units), batch_size):
            chunk = list(units[begin : begin + batch_size])
            noise = [
                torch.randn(
                    tuple(input_shape),
                    generator=torch.Generator().manual_seed(_unit_seed(seed, layer, unit)),
                )
                * 0.1
                for unit in chunk
            ]
            x = _clamp(torch.stack(noise).to(device=device, dtype=dtype), low, high)
            jitter = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                start = _check_and_measure(model, layer, x, chunk)
            for step in range(reg.steps):
                dy, dx = (
                    torch.randint(-reg.jitter, reg.jitter + 1, (2,), generator=jitter).tolist()
                    if reg.jitter
                    else (0, 0)
                )
                x = x.detach().requires_grad_(True)
                shifted = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                out = forward_to(model, [layer], shifted)[layer]
                (grad,) = torch.autograd.grad(_unit_values(out, chunk).sum(), x)
                with torch.no_grad():
                    x = _clamp(_ascend(x, grad, reg, step), low, high)
            with torch.no_grad():
                finals.append(_unit_values(forward_to(model, [layer], x)[layer], chunk))
            images.append(x.detach())
            starts.append(start)
    return Synthetic(
        images=torch.cat(images),
        start=torch.cat(starts).detach(),
        activation=torch.cat(finals).detach(),
    )


def _clamp(x: torch.Tensor, low: torch.Tensor | None, high: torch.Tensor | None) -> torch.Tensor:
    """`x` within the per-channel bounds, if any."""
    if low is None or high is None:
        return x
    return torch.maximum(torch.minimum(x, high), low)


def _ascend(x: torch.Tensor, grad: torch.Tensor, reg: Regularisers, step: int) -> torch.Tensor:
    """One step of gradient ascent (the gradient scaled to unit RMS per image) followed by the
    regularisers due at `step`: L2 decay, a Gaussian blur every `blur_every` steps, and zeroing
    the pixels whose norm is below the `clip_percentile`-th percentile."""
    rms = grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    x = x + reg.learning_rate * grad / (rms + 1e-12)
    x = x * (1 - reg.l2_decay)
    if reg.blur_every and reg.blur_sigma > 0 and (step + 1) % reg.blur_every == 0:
        kernel = 2 * math.ceil(2 * reg.blur_sigma) + 1
        x = gaussian_blur(x, [kernel, kernel], [reg.blur_sigma, reg.blur_sigma])
    if reg.clip_percentile > 0:
        norms = x.norm(dim=1)  # [U, H, W]
        cut = torch.quantile(norms.flatten(1), reg.clip_percentile / 100, dim=1)
        x = x * (norms >= cut.view(-1, 1, 1)).unsqueeze(1)
    return x


def _check_and_measure(
    model: nn.Module, layer: str, x: torch.Tensor, units: Sequence[tuple[int, int, int]]
) -> torch.Tensor:
    """The units' activations for `x`, refusing units outside the layer's output."""
    out = forward_to(model, [layer], x)[layer]
    shape = tuple(out.shape[1:])
    height, width = shape[1:] if len(shape) == 3 else (1, 1)
    for channel, y, x_pos in units:
        if not 0 <= channel < shape[0] or not 0 <= y < height or not 0 <= x_pos < width:
            raise InvalidInput(
                f"unit (channel {channel}, y {y}, x {x_pos}) is outside layer {layer!r}'s output "
                f"of {shape[0]} channels x {height} x {width}"
            )
    return _unit_values(out, units)
