"""Pictures that carry their own key: attribution tiles with their scale, the occlusion top-label
panel with a legend of its colours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnzoo.interpret.render import attribution_rgb, label_colours, label_legend, with_scale


def test_a_tile_with_its_scale() -> None:
    tile = attribution_rgb(torch.tensor([[-2.0, 0.0], [1.0, 0.5]])).repeat_interleave(40, 1)
    tile = tile.repeat_interleave(40, 2)  # 80 x 80
    framed = with_scale(tile, 2.0)
    assert framed.shape[0] == 3 and framed.shape[2] == 80 and framed.shape[1] > 80 + 6
    torch.testing.assert_close(framed[:, :80], tile)
    bar = framed[:, 82:88]
    # the palette from -peak (blue) through white to +peak (red)
    torch.testing.assert_close(bar[:, 0, 0], attribution_rgb(torch.tensor([[-1.0]]))[:, 0, 0])
    torch.testing.assert_close(bar[:, 0, -1], attribution_rgb(torch.tensor([[1.0]]))[:, 0, 0])
    # and the value of full colour written under it: dark text pixels on white
    text = framed[:, 88:]
    assert (text < 0.3).all(dim=0).any() and (text == 1).all(dim=0).float().mean() > 0.5
    assert not torch.equal(with_scale(tile, 2.0), with_scale(tile, 0.005))


def test_a_legend_shows_each_colour_beside_its_name() -> None:
    colours = label_colours(10)[[0, 3, 9]]
    legend = label_legend(["airplane", "cat", "truck"], colours, size=12)
    pixels = (legend * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    for row, colour in enumerate(colours):
        want = np.array([int(round(float(v) * 255)) for v in colour], dtype=np.uint8)
        top = 2 + row * 18
        swatch = pixels[top + 2 : top + 10, 4:12]
        assert (swatch == want).all(), row


def test_the_occlusion_picture_ends_with_its_legend(digits_run: Path) -> None:
    manifest = json.loads((digits_run / "manifest.json").read_text())
    section = next(a for a in manifest["analyses"] if a["kind"] == "occlusion")
    data = section["tables"]["3"]
    labels = [str(i) for i in range(10)]
    legend = label_legend(
        [labels[c] for c in data["top_labels"]], label_colours(10)[data["top_labels"]]
    )
    with Image.open(digits_run / section["files"][0]["path"]) as image:
        picture = np.asarray(image)
    height, width = legend.shape[1:]
    expected = (legend * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(picture[:height, -width:], expected)
    caption = section["files"][0]["caption"]
    assert "#" not in caption and "colours as in the legend" in caption
