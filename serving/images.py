"""Uploaded images (PNG/JPEG bytes) to one model input batch.

Decoding is `zoo.images`, the same code `cnnzoo explain` uses, so an upload and a file give the
same model input. An unusable upload becomes `InvalidImage`, which carries the image's position
in the request so that a client can name its own file.

Every header is read before any image is decoded, so a request over its pixel budget is refused
without decoding anything; the caller's deadline is checked before each image, so a request
whose caller has given up stops decoding within one image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from cnnzoo.errors import InvalidImage, InvalidInput
from cnnzoo.serving.limits import check_deadline, over_limit
from cnnzoo.zoo.images import load_image, open_image

if TYPE_CHECKING:
    from cnnzoo.zoo.preprocess import Preprocess

__all__ = ["images_to_batch"]

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
    convert = preprocess.pixels if as_pixels else preprocess.apply
    arrays = []
    for index, image in enumerate(opened):
        check_deadline(deadline, f"after decoding {index} of {len(opened)} image(s)")
        arrays.append(_guarded(index, lambda i: convert(load_image(i)), image))
    return np.stack(arrays)


def _guarded(index: int, step: Callable[[T], R], value: T) -> R:
    """`step(value)` for image `index`, its InvalidInput numbered as that image's."""
    try:
        return step(value)
    except InvalidInput as err:
        raise InvalidImage(index, err.reason) from None
