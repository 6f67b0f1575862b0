"""Streaming top-k activations per channel, with a total order so results never depend on
batch size, data order or how the data was split across processes.

Each image contributes at most one entry per channel: its strongest position (the first in
row-major order on ties). Entries are ranked by value, descending, then by image index,
ascending. Merging two partial results with this order is associative and commutative, so any
split of the dataset merges to the same table as one pass over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Entry", "TopK", "channel_maxima"]

_NO_IMAGE = torch.iinfo(torch.int64).max  # empty slots sort after every real image


@dataclass(frozen=True)
class Entry:
    """One top-k entry: activation value, dataset image index and position in the feature map."""

    value: float
    image: int
    y: int
    x: int


def channel_maxima(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and channel, the strongest activation and where it is.

    Args:
        output: a layer's output `[N, C, H, W]` (or `[N, F]` for a flat layer).

    Returns:
        values `[N, C]` (float64), ys `[N, C]`, xs `[N, C]` (int64); on ties the first position
        in row-major order (what `torch.max` returns).
    """
    out = output.detach()
    if out.dim() == 2:
        zeros = torch.zeros(out.shape, dtype=torch.int64, device=out.device)
        return out.double(), zeros, zeros.clone()
    if out.dim() != 4:
        raise ValueError(f"expected [N, C, H, W] or [N, F], got {list(out.shape)}")
    width = out.shape[-1]
    values, flat = out.flatten(2).max(dim=2)
    return values.double(), flat // width, flat % width


@dataclass
class TopK:
    """The k strongest entries of each tracked channel, best first.

    Attributes:
        values: `[C, k]` float64 (-inf in empty slots).
        images: `[C, k]` int64 dataset image indices (int64 max in empty slots).
        ys, xs: `[C, k]` int64 positions.
    """

    values: torch.Tensor
    images: torch.Tensor
    ys: torch.Tensor
    xs: torch.Tensor

    @classmethod
    def empty(cls, channels: int, k: int) -> TopK:
        shape = (channels, k)
        return cls(
            values=torch.full(shape, float("-inf"), dtype=torch.float64),
            images=torch.full(shape, _NO_IMAGE, dtype=torch.int64),
            ys=torch.zeros(shape, dtype=torch.int64),
            xs=torch.zeros(shape, dtype=torch.int64),
        )

    @property
    def k(self) -> int:
        return self.values.shape[1]

    @property
    def channels(self) -> int:
        return self.values.shape[0]

    def update(
        self, values: torch.Tensor, images: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor
    ) -> None:
        """Fold in one batch: values/ys/xs `[B, C]` (from `channel_maxima`, columns = tracked
        channels), images `[B]` dataset indices."""
        batch = TopK(
            values=values.detach().cpu().double().T.contiguous(),
            images=images.detach().cpu().long().expand(values.shape[1], -1).contiguous(),
            ys=ys.detach().cpu().long().T.contiguous(),
            xs=xs.detach().cpu().long().T.contiguous(),
        )
        merged = self.merge(batch)
        self.values, self.images, self.ys, self.xs = (
            merged.values, merged.images, merged.ys, merged.xs,
        )  # fmt: skip

    def merge(self, other: TopK) -> TopK:
        """The top-k of the union of both tables (k of `self`)."""
        values = torch.cat([self.values, other.values], dim=1)
        values = torch.nan_to_num(values, nan=float("-inf"))
        images = torch.cat([self.images, other.images], dim=1)
        ys = torch.cat([self.ys, other.ys], dim=1)
        xs = torch.cat([self.xs, other.xs], dim=1)
        # Two stable sorts give (value desc, image asc): first by the tie-breaker, then the key.
        order = torch.argsort(images, dim=1, stable=True)
        values, images, ys, xs = (t.gather(1, order) for t in (values, images, ys, xs))
        order = torch.argsort(values, dim=1, descending=True, stable=True)[:, : self.k]
        return TopK(*(t.gather(1, order) for t in (values, images, ys, xs)))

    def entries(self, channel: int) -> list[Entry]:
        """The filled entries of one tracked channel (by row), best first."""
        return [
            Entry(float(v), int(i), int(y), int(x))
            for v, i, y, x in zip(
                self.values[channel].tolist(),
                self.images[channel].tolist(),
                self.ys[channel].tolist(),
                self.xs[channel].tolist(),
                strict=True,
            )
            if i != _NO_IMAGE
        ]

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat tensors for `safetensors`."""
        return {
            f"{prefix}values": self.values.contiguous(),
            f"{prefix}images": self.images.contiguous(),
            f"{prefix}ys": self.ys.contiguous(),
            f"{prefix}xs": self.xs.contiguous(),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "") -> TopK:
        return cls(*(tensors[f"{prefix}{key}"] for key in ("values", "images", "ys", "xs")))

    def equals(self, other: TopK) -> bool:
        return all(
            torch.equal(a, b)
            for a, b in zip(self.to_tensors().values(), other.to_tensors().values(), strict=True)
        )
