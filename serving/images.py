"""Uploaded images (PNG/JPEG bytes) to one model input batch.

Decoding is `zoo.images.decode_image`, the same function `cnnzoo explain` uses, so an upload and
a file give the same model input. An unusable upload becomes `InvalidImage`, which carries the
image's position in the request so that a client can name its own file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cnnzoo.errors import InvalidImage, InvalidInput
from cnnzoo.zoo.images import decode_image

if TYPE_CHECKING:
    from cnnzoo.zoo.preprocess import Preprocess

__all__ = ["images_to_batch"]


def images_to_batch(images: Sequence[bytes], preprocess: Preprocess) -> np.ndarray:
    """Decode and preprocess images into one float32 `[N, C, H, W]` batch.

    Raises:
        InvalidInput: no images.
        InvalidImage: one of them is unusable (the message and `index` give its position).
    """
    if not images:
        raise InvalidInput("no images in the request; send at least one PNG or JPEG file")
    arrays = []
    for index, data in enumerate(images):
        try:
            arrays.append(preprocess.apply(decode_image(data)))
        except InvalidInput as err:
            raise InvalidImage(index, err.reason) from None
    return np.stack(arrays)
