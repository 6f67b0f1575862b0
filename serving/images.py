"""Uploaded images (PNG/JPEG bytes) to one model input batch.

Decoding is `zoo.images`, the same code `cnnzoo explain` uses, so an upload and a file give the
same model input. An unusable upload becomes `InvalidImage`, which carries the image's position
in the request so that a client can name its own file.

Every header is read before any image is decoded, so a request over its pixel budget is refused
without decoding anything; the caller's deadline is checked before each image, so a request
whose caller has given up stops decoding within one image.

The server decodes a request of several images in parts of at most `PART_PIXELS` pixels
(`open_images`, `pixel_parts`, `convert_images`), each its own turn on the decoding threads, so
the threads go round the callers part by part and a large request cannot hold them for long.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from cnnzoo.errors import InvalidImage, InvalidInput
from cnnzoo.serving.limits import check_deadline, over_limit
from cnnzoo.zoo.images import load_image, open_image

if TYPE_CHECKING:
    from PIL.Image import Image

    from cnnzoo.zoo.preprocess import Preprocess

__all__ = ["PART_PIXELS", "convert_images", "images_to_batch", "open_images", "pixel_parts"]

# Pixels decoded in one turn on a decoding thread (a few tens of milliseconds of Pillow).
PART_PIXELS = 2_000_000

T = TypeVar("T")
R = TypeVar("R")


def images_to_batch(
    images: Sequence[bytes],
    preprocess: Preprocess,
    *,
    max_pixels: int | None = None,
    deadline: float | None = None,
    as_pixels: bool = False,
) -> np.ndarray:
    """Decode and preprocess images into one `[N, C, H, W]` batch: float32, or with
    `as_pixels` the uint8 pixels a model exported with `--input-dtype uint8` scales and
    normalises itself (`Preprocess.pixels`).

    Args:
        images: encoded PNG/JPEG files.
        preprocess: the model's preprocessing.
        max_pixels: most pixels (width x height, all images together) to decode (None: any).
        deadline: `time.monotonic()` after which the caller no longer waits (None: none).
        as_pixels: stop before scaling and normalisation (uint8 pixels).

    Raises:
        InvalidInput: no images.
        InvalidImage: one of them is unusable (the message and `index` give its position).
        ResourceExhausted: the images hold more than `max_pixels` pixels.
        DeadlineExceeded: the deadline passed before every image was decoded.
    """
    opened = open_images(images, max_pixels)
    return np.stack(convert_images(opened, preprocess, deadline=deadline, as_pixels=as_pixels))


def open_images(images: Sequence[bytes], max_pixels: int | None = None) -> list[Image]:
    """Read every image's header (nothing decoded yet) and check the request's pixel budget.

    Raises:
        InvalidInput, InvalidImage, ResourceExhausted: as `images_to_batch`.
    """
    if not images:
        raise InvalidInput("no images in the request; send at least one PNG or JPEG file")
    opened = [_guarded(index, open_image, data) for index, data in enumerate(images)]
    if max_pixels is not None:
        pixels = sum(image.width * image.height for image in opened)
        if pixels > max_pixels:
            raise over_limit(
                f"the pixels of the request's {len(opened)} image(s)",
                pixels,
                max_pixels,
                "--max-request-pixels",
            )
    return opened


def pixel_parts(opened: Sequence[Image], budget: int = PART_PIXELS) -> list[range]:
    """Consecutive runs of images of at most `budget` pixels each (an image over it alone)."""
    parts: list[range] = []
    start, pixels = 0, 0
    for index, image in enumerate(opened):
        size = image.width * image.height
        if index > start and pixels + size > budget:
            parts.append(range(start, index))
            start, pixels = index, 0
        pixels += size
    if start < len(opened):
        parts.append(range(start, len(opened)))
    return parts


def convert_images(
    opened: Sequence[Image],
    preprocess: Preprocess,
    part: range | None = None,
    *,
    deadline: float | None = None,
    as_pixels: bool = False,
) -> list[np.ndarray]:
    """Decode and preprocess the images of `part` (default: all), as `images_to_batch`."""
    convert = preprocess.pixels if as_pixels else preprocess.apply
    arrays = []
    for index in part if part is not None else range(len(opened)):
        check_deadline(deadline, f"after decoding {index} of {len(opened)} image(s)")
        arrays.append(_guarded(index, lambda i: convert(load_image(i)), opened[index]))
    return arrays


def _guarded(index: int, step: Callable[[T], R], value: T) -> R:
    """`step(value)` for image `index`, its InvalidInput numbered as that image's."""
    try:
        return step(value)
    except InvalidInput as err:
        raise InvalidImage(index, err.reason) from None
