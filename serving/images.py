"""Encoded images (PNG/JPEG bytes) to model input arrays, with Pillow and the model's Preprocess.

Every way an upload can be wrong becomes `InvalidInput` naming the image and what is wrong:
empty, not PNG/JPEG, corrupt or truncated, or larger than Pillow's decompression-bomb limit
(`PIL.Image.MAX_IMAGE_PIXELS`) - that one is refused from the header, before decoding.
Unusual but valid pixel formats are converted the way the training pipeline would see them:
16-bit greyscale is scaled to 8 bits, CMYK and palette images become RGB(A), alpha is dropped
by the colour conversion (as torchvision's image loader does).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from serving.errors import InvalidInput

if TYPE_CHECKING:
    from PIL import Image

    from zoo.preprocess import Preprocess

__all__ = ["FORMATS", "decode_image", "images_to_batch"]

FORMATS = ("PNG", "JPEG")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_image(data: bytes) -> Image.Image:
    """Decode PNG or JPEG bytes into a fully loaded PIL image.

    Raises:
        InvalidInput: the bytes are empty, not PNG/JPEG, corrupt, truncated or too large.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInput("the image is empty (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns between MAX_IMAGE_PIXELS and twice that; both are refused here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidInput(
                f"the image is too large: more than {Image.MAX_IMAGE_PIXELS} pixels "
                "(a decompression bomb?); send a smaller image"
            ) from None
        except UnidentifiedImageError:
            raise InvalidInput(
                f"not a {' or '.join(FORMATS)} image ({len(data)} bytes starting {data[:8]!r})"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise InvalidInput(f"the image is corrupt or truncated: {err}") from None
    return _normalise_mode(image)


def _normalise_mode(image: Image.Image) -> Image.Image:
    """Bring rare pixel formats to ones `Image.convert("L"/"RGB")` handles faithfully."""
    from PIL import Image

    if image.mode in _SIXTEEN_BIT_MODES:
        # convert("L") would clip 16-bit values at 255 (a white image); scale them instead.
        pixels = np.asarray(image).astype(np.uint32) >> 8
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        return image.convert("RGBA")  # keeps transparency information correct
    if image.mode == "CMYK":
        return image.convert("RGB")
    if image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image), nan=0.0)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")
    return image


def images_to_batch(images: Sequence[bytes], preprocess: Preprocess) -> np.ndarray:
    """Decode and preprocess images into one float32 `[N, C, H, W]` batch.

    Raises:
        InvalidInput: no images, or one of them is unusable (the message gives its index).
    """
    if not images:
        raise InvalidInput("no images in the request; send at least one PNG or JPEG file")
    arrays = []
    for index, data in enumerate(images):
        try:
            arrays.append(preprocess.apply(decode_image(data)))
        except InvalidInput as err:
            raise InvalidInput(f"image {index}: {err.reason}") from None
    return np.stack(arrays)
