"""The torch-free renderer draws the Explain PNG pixel for pixel as the PyTorch one does (the
files differ only in their compression level)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.interpret import render
from cnnzoo.interpret.graphs import attribution_png, attribution_rgb, png_bytes

RNG = np.random.default_rng(0)
MAPS = {
    "signed": RNG.standard_normal((32, 32)).astype(np.float32),
    "large": RNG.standard_normal((224, 224)).astype(np.float32) * 1e3,
    "tiny": RNG.standard_normal((28, 28)).astype(np.float32) * 1e-30,
    "positive": RNG.exponential(size=(17, 9)).astype(np.float32),
    "zero": np.zeros((5, 7), np.float32),
    "nan": np.array([[np.nan, 1.0], [0.5, -2.0]], np.float32),
    "inf": np.array([[np.inf, 1.0]], np.float32),
}


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("name", list(MAPS))
def test_same_pixels_as_the_torch_renderer(name: str) -> None:
    a = MAPS[name]
    expected = render.attribution_rgb(torch.from_numpy(a))
    assert np.array_equal(attribution_rgb(a), expected.numpy())
    assert np.array_equal(pixels(png_bytes(attribution_rgb(a))), pixels(render.png_bytes(expected)))


def test_a_graph_map_renders_as_explain_renders_it() -> None:
    """`cnnzoo.interpret.explain` sums the channels of one image's map, then renders it."""
    maps = RNG.standard_normal((3, 3, 16, 16)).astype(np.float32)
    expected = render.png_bytes(render.attribution_rgb(torch.from_numpy(maps)[1].sum(dim=0)))
    assert np.array_equal(pixels(attribution_png(maps[1])), pixels(expected))
    with pytest.raises(ValueError, match=r"\[C, H, W\] or \[H, W\]"):
        attribution_png(maps)
