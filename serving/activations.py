"""Every layer's channel maps for one image: the answer of the activations route (what the
explorer draws as its strip), from one run of the classifier's activations graph
(`cnnzoo.interpret.graphs`, method `activations`: one output per layer).

Each layer comes back as one greyscale PNG holding its channels side by side, strongest first
(ordered by each channel's largest value for this image, as the DeepVis toolbox orders them),
so a page draws a layer with one image and finds the channel under a click by dividing by the
map's width. The grey levels span the layer's own range (`low` black, `high` white), so the
channels of a layer compare with each other; the numbers themselves (`peaks`, the range) come
with the picture.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnzoo.errors import LayerNotFound

__all__ = ["ActivationsResult", "LayerMaps", "input_png", "layer_maps", "select_layers"]


@dataclass(frozen=True)
class LayerMaps:
    """One layer's channel maps for one image.

    Attributes:
        name: the layer (outermost module holding the tensor); `aliases` its other names.
        shape: `(C, H, W)`, or `(F,)` for a flat layer (each feature a 1x1 map).
        order: channel indices, strongest first.
        peaks: each channel's largest value, in channel order.
        low, high: the values drawn black and white.
        png: the maps in `order`, side by side: an 8-bit grey image `H` x `C * W`.
        receptive_field: `size`, `stride`, `offset` (y, x) in input pixels, or None (the layer
            sees the whole image, or has no single stride).
    """

    name: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    order: tuple[int, ...]
    peaks: tuple[float, ...]
    low: float
    high: float
    png: bytes
    receptive_field: dict[str, list[int]] | None


@dataclass(frozen=True)
class ActivationsResult:
    """The activations route's answer: the model's view of the image (`input_png`: the pixels
    after its resize and crop, which the maps and receptive fields are in) and the layers."""

    model: str
    version: str
    input_png: bytes
    layers: tuple[LayerMaps, ...]


def select_layers(entries: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """The graph's layer entries named by `names` (a layer's name or one of its aliases), in
    the graph's order; every layer when `names` is empty.

    Raises:
        LayerNotFound: a name the graph has no layer for (the message lists them).
    """
    if not names:
        return list(entries)
    known = {alias: e["name"] for e in entries for alias in (e["name"], *e.get("aliases", ()))}
    missing = [n for n in names if n not in known]
    if missing:
        raise LayerNotFound(
            f"unknown layer {', '.join(map(repr, missing))}; valid layers: "
            f"{', '.join(e['name'] for e in entries)}"
        )
    wanted = {known[n] for n in names}
    return [e for e in entries if e["name"] in wanted]


def layer_maps(entry: dict[str, Any], value: np.ndarray) -> LayerMaps:
    """One layer's maps from its graph output for one image (`[C, H, W]` or `[F]`)."""
    maps = np.asarray(value, dtype=np.float32)
    if maps.ndim == 1:
        maps = maps[:, None, None]
    channels, height, width = maps.shape
    peaks = maps.reshape(channels, -1).max(axis=1)
    order = np.argsort(-peaks, kind="stable")
    low = min(float(maps.min()), 0.0)
    high = max(float(maps.max()), low)
    span = high - low
    grey = np.zeros_like(maps) if span == 0 else (maps - np.float32(low)) / np.float32(span)
    strip = grey[order].transpose(1, 0, 2).reshape(height, channels * width)
    return LayerMaps(
        name=entry["name"],
        aliases=tuple(entry.get("aliases", ())),
        shape=tuple(int(s) for s in entry["shape"]),
        order=tuple(int(i) for i in order),
        peaks=tuple(float(p) for p in peaks),
        low=low,
        high=high,
        png=_png(np.round(np.clip(strip, 0, 1) * 255).astype(np.uint8)),
        receptive_field=entry.get("receptive_field"),
    )


def input_png(pixels: np.ndarray) -> bytes:
    """The model's view of the image: uint8 `[C, H, W]` (1 or 3 channels) as PNG."""
    array = np.asarray(pixels, dtype=np.uint8)
    return _png(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    # Level 1: these pictures are made per request, and size matters less than time here.
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
