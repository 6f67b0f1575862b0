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
        channels), images `[B]` dataset indices.

        Entries below a channel's current k-th value can never enter its table (that value only
        grows), so they are dropped before sorting; entries equal to it stay, for the tie-break.
        NaN activations never enter.
        """
        values = values.detach().to("cpu", torch.float64)
        passing = values >= self.values[:, -1]  # [B, C]
        rows = passing.any(dim=1)
        if not bool(rows.any()):
            return
        if not bool(rows.all()):
            keep = rows.nonzero().flatten()
            values, passing = values[keep], passing[keep]
            images, ys, xs = images.cpu()[keep], ys.cpu()[keep], xs.cpu()[keep]
        channels = values.shape[1]
        batch = TopK(
            values=values.masked_fill(~passing, float("-inf")).T.contiguous(),
            images=images.cpu().long().expand(channels, -1).masked_fill(~passing.T, _NO_IMAGE),
            ys=ys.cpu().long().T,
            xs=xs.cpu().long().T,
        )
        filled = self.images[self.images != _NO_IMAGE]
        in_order = bool((images[1:] > images[:-1]).all()) and (
            filled.numel() == 0 or int(images.min()) > int(filled.max())
        )
        merged = self._merge(batch, in_order)
        self.values, self.images, self.ys, self.xs = (
            merged.values, merged.images, merged.ys, merged.xs,
        )  # fmt: skip

    def merge(self, other: TopK) -> TopK:
        """The top-k of the union of both tables (k of `self`)."""
        # NaN never enters. Not `nan_to_num`: it would also turn the -inf of empty slots into
        # the most negative float.
        values = other.values.masked_fill(other.values.isnan(), float("-inf"))
        return self._merge(TopK(values, other.images, other.ys, other.xs))

    def _merge(self, other: TopK, in_order: bool = False) -> TopK:
        values = torch.cat([self.values, other.values], dim=1)
        images = torch.cat([self.images, other.images], dim=1)
        ys = torch.cat([self.ys, other.ys], dim=1)
        xs = torch.cat([self.xs, other.xs], dim=1)
        # Two stable sorts give (value desc, image asc): first by the tie-breaker, then the key.
        # `in_order`: every new image comes after the table's, in order (a sequential scan), so
        # the concatenation already breaks ties by image and one sort suffices.
        if not in_order:
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
