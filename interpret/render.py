"""Turn maps, patches and filters into pictures (torchvision.utils grids, Pillow PNGs).

Every tile is a float tensor `[3, H, W]` in [0, 1]. PNGs are written atomically and contain
nothing but pixels, so the same tensors always give the same bytes.
"""

from __future__ import annotations

import colorsys
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from cnnzoo.fileio import atomic_path
from cnnzoo.interpret.graphs.render import ANSWER_PNG_LEVEL

__all__ = [
    "attribution_rgb",
    "boxed",
    "crop_padded",
    "default_scale",
    "denormalise",
    "explanation_figure",
    "figure_layout",
    "filter_grid",
    "heat_rgb",
    "label_colours",
    "label_legend",
    "overlay",
    "png_bytes",
    "projection_rgb",
    "save_png",
    "side_by_side",
    "tile_grid",
    "upscale",
    "with_scale",
]

_BLUE = torch.tensor([0.13, 0.40, 0.80]).view(3, 1, 1)
_RED = torch.tensor([0.80, 0.13, 0.13]).view(3, 1, 1)


def _rgb(t: torch.Tensor) -> torch.Tensor:
    """`[1, H, W]` -> `[3, H, W]`; RGB unchanged; other channel counts averaged to grey."""
    if t.shape[0] == 3:
        return t
    if t.shape[0] != 1:
        t = t.mean(dim=0, keepdim=True)
    return t.expand(3, -1, -1)


def denormalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A preprocessed image `[C, H, W]` back to displayable RGB `[3, H, W]` in [0, 1]."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return _rgb((x.detach().float().cpu() * std_t + mean_t).clamp(0, 1))


def crop_padded(t: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Crop `[C, H, W]` to (top, left, bottom, right), filling the part outside with zeros."""
    top, left, bottom, right = box
    out = torch.zeros((t.shape[0], bottom - top, right - left), dtype=t.dtype)
    height, width = t.shape[-2:]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(bottom, height), min(right, width)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = t[:, y0:y1, x0:x1]
    return out


def projection_rgb(p: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """A projection `[C, H, W]` as an image: zero is mid-grey, the largest |value| full contrast
    (Zeiler & Fergus show each projection contrast-normalised on its own)."""
    p = p.detach().float().cpu()
    peak = float(p.abs().max()) if scale is None else scale
    if peak == 0.0 or not math.isfinite(peak):
        return torch.full((3, *p.shape[-2:]), 0.5)
    return _rgb((p / (2 * peak) + 0.5).clamp(0, 1))


def attribution_rgb(a: torch.Tensor) -> torch.Tensor:
    """A signed map `[H, W]` in a diverging palette: white at zero, red positive, blue negative,
    full colour at the largest |value|."""
    a = a.detach().float().cpu()
    peak = float(a.abs().max())
    if peak == 0.0 or not math.isfinite(peak):
        return torch.ones((3, *a.shape))
    s = (a / peak).clamp(-1, 1).unsqueeze(0)
    pos = s.clamp(min=0)
    neg = (-s).clamp(min=0)
    return (1 - pos - neg) * torch.ones(3, 1, 1) + pos * _RED + neg * _BLUE


def overlay(image: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """A signed map `[H, W]` laid over an image `[3, H, W]`: the image in dimmed grey, the map's
    colours (as `attribution_rgb`) opaque where |value| is largest, transparent at zero."""
    a = a.detach().float().cpu()
    peak = float(a.abs().max())
    grey = image.detach().float().cpu().mean(dim=0, keepdim=True).expand(3, -1, -1) * 0.6 + 0.2
    if peak == 0.0 or not math.isfinite(peak):
        return grey.clone()
    alpha = (a.abs() / peak).clamp(0, 1).unsqueeze(0)
    colour = torch.where(a.unsqueeze(0) >= 0, _RED, _BLUE)
    return grey * (1 - alpha) + colour * alpha


def _text_strip(width: int, lines: Sequence[str], size: int = 11) -> Image.Image:
    """White strip `width` px wide with each line centred (the default font at `size` px)."""
    font = ImageFont.load_default(size=size)
    strip = Image.new("RGB", (width, (size + 3) * len(lines) + 2), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((width // 2, 1 + i * (size + 3)), line, fill=(0, 0, 0), font=font, anchor="ma")
    return strip


def _from_image(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def with_scale(tile: torch.Tensor, peak: float) -> torch.Tensor:
    """`tile` (a map drawn by `attribution_rgb` or `overlay`) above its scale: the palette from
    -peak (blue) through 0 (white) to +peak (red), and the value of full colour, "±peak"."""
    width = tile.shape[-1]
    ramp = torch.linspace(-1.0, 1.0, width).expand(6, -1)
    label = f"±{peak:.3g}" if math.isfinite(peak) and peak > 0 else "all 0"
    text = _from_image(_text_strip(width, [label]))
    return torch.cat([tile, torch.ones(3, 2, width), attribution_rgb(ramp), text], dim=1)


def label_legend(names: Sequence[str], colours: torch.Tensor, size: int = 12) -> torch.Tensor:
    """A legend of coloured squares, each followed by its name, one per line, on white."""
    font = ImageFont.load_default(size=size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max((probe.textlength(n, font=font) for n in names), default=0)
    line = size + 6
    legend = Image.new("RGB", (int(width) + size + 14, line * len(names) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for i, (name, colour) in enumerate(zip(names, colours, strict=True)):
        top = 2 + i * line
        fill = tuple(int(round(float(v) * 255)) for v in colour)
        draw.rectangle((2, top, 2 + size, top + size), fill=fill, outline=(90, 90, 90))
        draw.text((size + 8, top), name, fill=(0, 0, 0), font=font)
    return _from_image(legend)


def heat_rgb(m: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """A map `[H, W]` in a black-red-yellow-white palette, `low` black and `high` white."""
    t = ((m.detach().float().cpu() - low) / (high - low if high > low else 1.0)).clamp(0, 1)
    return torch.stack([(3 * t).clamp(0, 1), (3 * t - 1).clamp(0, 1), (3 * t - 2).clamp(0, 1)])


def label_colours(count: int) -> torch.Tensor:
    """`count` distinguishable colours `[count, 3]` (evenly spaced hues)."""
    colours = [colorsys.hsv_to_rgb(i / max(count, 1), 0.75, 0.95) for i in range(count)]
    return torch.tensor(colours, dtype=torch.float32)


def upscale(t: torch.Tensor, min_side: int) -> torch.Tensor:
    """Nearest-neighbour enlargement by the smallest integer factor reaching `min_side`."""
    factor = max(1, math.ceil(min_side / max(t.shape[-2:])))
    if factor == 1:
        return t
    return F.interpolate(t.unsqueeze(0), scale_factor=factor, mode="nearest").squeeze(0)


def boxed(
    image: torch.Tensor, box: tuple[int, int, int, int], min_side: int, width: int = 2
) -> torch.Tensor:
    """An image `[3, H, W]` enlarged (nearest-neighbour, see `upscale`) with the outline of
    `box` (top, left, bottom, right; end-exclusive, clipped to the image) drawn in yellow."""
    big = upscale(image.detach().float().cpu(), min_side).clone()
    factor = big.shape[-1] // image.shape[-1]
    height, width_px = image.shape[-2:]
    top, left = max(box[0], 0) * factor, max(box[1], 0) * factor
    bottom, right = min(box[2], height) * factor, min(box[3], width_px) * factor
    yellow = torch.tensor([1.0, 0.85, 0.0]).view(3, 1, 1)
    if bottom > top and right > left:
        edge = min(width, (bottom - top + 1) // 2, (right - left + 1) // 2)
        for rows, cols in (
            (slice(top, top + edge), slice(left, right)),
            (slice(bottom - edge, bottom), slice(left, right)),
            (slice(top, bottom), slice(left, left + edge)),
            (slice(top, bottom), slice(right - edge, right)),
        ):
            big[:, rows, cols] = yellow
    return big


def tile_grid(
    tiles: Sequence[torch.Tensor], nrow: int, pad_value: float = 1.0, padding: int = 2
) -> torch.Tensor:
    """Equal-sized tiles in a grid (torchvision's `make_grid`)."""
    return make_grid(torch.stack(list(tiles)), nrow=nrow, padding=padding, pad_value=pad_value)


def side_by_side(images: Sequence[torch.Tensor], gap: int = 8) -> torch.Tensor:
    """Images of possibly different heights in one row, top-aligned, on white."""
    height = max(img.shape[1] for img in images)
    width = sum(img.shape[2] for img in images) + gap * (len(images) - 1)
    canvas = torch.ones((3, height, width))
    left = 0
    for img in images:
        canvas[:, : img.shape[1], left : left + img.shape[2]] = img
        left += img.shape[2] + gap
    return canvas


def filter_grid(weight: torch.Tensor, min_side: int = 33) -> torch.Tensor:
    """First-layer kernels `[O, I, kh, kw]` as one grid, each tile min-max normalised on its own
    (Krizhevsky et al. 2012, Fig. 3); 3 input channels show as colour, others as grey."""
    w = weight.detach().float().cpu()
    tiles = []
    for kernel in w:
        low, high = float(kernel.min()), float(kernel.max())
        tile = (kernel - low) / (high - low) if high > low else torch.full_like(kernel, 0.5)
        tiles.append(upscale(_rgb(tile), min_side))
    return tile_grid(tiles, nrow=math.ceil(math.sqrt(len(tiles))))


def _to_image(t: torch.Tensor) -> Image.Image:
    pixels = (t.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))


def png_bytes(t: torch.Tensor) -> bytes:
    """`[3, H, W]` in [0, 1] as PNG bytes, compressed as the server's answers are."""
    buffer = io.BytesIO()
    _to_image(t).save(buffer, format="PNG", compress_level=ANSWER_PNG_LEVEL)
    return buffer.getvalue()


def save_png(t: torch.Tensor, path: str | Path) -> None:
    """Write `[3, H, W]` in [0, 1] as a PNG, atomically."""
    with atomic_path(path) as tmp:
        _to_image(t).save(tmp, format="PNG")


# -- the figure `cnnzoo explain` writes -------------------------------------------------------

_MARGIN = 12  # around the figure and between panels, in pixels
_TEXT = 20  # height of a line of text


def default_scale(height: int, width: int, short_side: int = 256) -> int:
    """The smallest integer enlargement that makes the image's short side at least
    `short_side` pixels."""
    return max(1, math.ceil(short_side / min(height, width)))


def figure_layout(height: int, width: int, scale: int) -> dict[str, tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each part of `explanation_figure` for an image of
    `height` x `width` pixels enlarged `scale` times: the three panels and the colour bar."""
    side_h, side_w = height * scale, width * scale
    top = _MARGIN + 2 * _TEXT  # the title line, then the panel names
    boxes = {}
    for i, name in enumerate(("input", "map", "overlay")):
        left = _MARGIN + i * (side_w + _MARGIN)
        boxes[name] = (left, top, left + side_w, top + side_h)
    bar_top = top + side_h + _MARGIN
    boxes["colour bar"] = (boxes["map"][0], bar_top, boxes["map"][2], bar_top + 12)
    return boxes


def explanation_figure(
    image: torch.Tensor, attribution: torch.Tensor, title: str, scale: int
) -> bytes:
    """The input, the signed map and the map over the dimmed input side by side, each enlarged
    `scale` times with nearest-neighbour pixels, under `title`, above a colour bar from -peak
    (blue) through 0 (white) to +peak (red); as PNG bytes.

    Args:
        image: the input as RGB `[3, H, W]` in [0, 1].
        attribution: the map `[H, W]`.
        title: one line, e.g. the method, the class and its probability.
        scale: the enlargement (see `default_scale`).
    """
    height, width = attribution.shape
    boxes = figure_layout(height, width, scale)
    bar = boxes["colour bar"]
    canvas = Image.new(
        "RGB", (boxes["overlay"][2] + _MARGIN, bar[3] + _TEXT + _MARGIN), (255, 255, 255)
    )
    panels = {
        "input": image,
        "map": attribution_rgb(attribution),
        "overlay": overlay(image, attribution),
    }
    for name, panel in panels.items():
        big = F.interpolate(panel[None].float(), scale_factor=scale, mode="nearest")[0]
        canvas.paste(_to_image(big), boxes[name][:2])
    peak = float(attribution.abs().max())
    ramp = torch.linspace(-1.0, 1.0, bar[2] - bar[0]).expand(bar[3] - bar[1], -1)
    canvas.paste(_to_image(attribution_rgb(ramp)), bar[:2])
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    draw.text((_MARGIN, _MARGIN), title, fill=(0, 0, 0), font=font)
    for name, box in boxes.items():
        if name != "colour bar":
            draw.text((box[0], box[1] - _TEXT + 2), name, fill=(80, 80, 80), font=font)
    draw.rectangle((bar[0] - 1, bar[1] - 1, bar[2], bar[3]), outline=(120, 120, 120))
    labels = ((bar[0], f"-{peak:.3g}", "la"), ((bar[0] + bar[2]) // 2, "0", "ma"))
    for x, text, anchor in (*labels, (bar[2], f"+{peak:.3g}", "ra")):
        draw.text((x, bar[3] + 3), text, fill=(0, 0, 0), font=font, anchor=anchor)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
