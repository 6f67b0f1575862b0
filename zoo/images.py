"""Encoded images (PNG/JPEG) to PIL images, the same way for every part of cnnzoo.

The server's uploads and `cnnzoo explain`'s files go through `decode_image`, so one image gives
one model input wherever it comes from. Every way an image can be wrong becomes `InvalidInput`
saying what is wrong: empty, not PNG/JPEG, corrupt or truncated, or larger than Pillow's
decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) - that one is refused from the header,
before decoding. Unusual but valid pixel formats are converted the way the training pipeline
would see them: 16-bit greyscale is scaled to 8 bits, CMYK and palette images become RGB(A),
alpha is dropped by the colour conversion in `Preprocess.apply` (as torchvision's loader does).
An EXIF orientation tag (phone cameras store pictures sideways and say so) is applied, so the
model sees the picture the way every image viewer shows it.

`open_image` reads only the header (format, size), so a caller can count pixels before paying
for any decoding; `load_image` decodes it. `decode_image` is both.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnzoo.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["FORMATS", "decode_image", "load_image", "open_image", "read_image"]

FORMATS = ("PNG", "JPEG")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# How the accepted formats' files begin (a broken one is "corrupt", not "not an image").
_SIGNATURES = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff"}


def decode_image(data: bytes, formats: tuple[str, ...] | None = FORMATS) -> Image.Image:
    """Decode PNG or JPEG bytes into a fully loaded, upright PIL image in a mode `Preprocess`
    handles.

    Args:
        data: the encoded image.
        formats: the Pillow formats accepted; None accepts any format Pillow reads (image
            folders on disk, where the file name says what it is).

    Raises:
        InvalidInput: the bytes are empty, not in `formats`, corrupt, truncated or too large.
    """
    return load_image(open_image(data, formats))


def open_image(data: bytes, formats: tuple[str, ...] | None = FORMATS) -> Image.Image:
    """Identify encoded image bytes and read their header (nothing is decoded yet).

    Raises:
        InvalidInput: the bytes are empty, not in `formats`, or declare too many pixels.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInput("the image is empty (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns between MAX_IMAGE_PIXELS and twice that; both are refused here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data), formats=formats)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidInput(
                f"the image is too large: more than {Image.MAX_IMAGE_PIXELS} pixels "
                "(a decompression bomb?); use a smaller image"
            ) from None
        except UnidentifiedImageError:
            signed = next((f for f, sig in _SIGNATURES.items() if data.startswith(sig)), None)
            if signed is not None and (formats is None or signed in formats):
                raise InvalidInput(
                    f"the image is corrupt or truncated: it starts as a {signed} file but its "
                    f"header cannot be read ({len(data)} bytes)"
                ) from None
            kind = " or ".join(formats) if formats else "readable"
            raise InvalidInput(
                f"not a {kind} image ({len(data)} bytes starting {data[:8]!r})"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise InvalidInput(f"the image is corrupt or truncated: {err}") from None


def load_image(image: Image.Image) -> Image.Image:
    """Decode an image from `open_image`, turn it upright (EXIF orientation) and bring its mode
    to one `Preprocess` handles.

    Raises:
        InvalidInput: the image data is corrupt or truncated.
    """
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InvalidInput(f"the image is corrupt or truncated: {err}") from None
    _apply_orientation(image)
    return _normalise_mode(image)


def read_image(
    path: str | os.PathLike[str], formats: tuple[str, ...] | None = FORMATS
) -> Image.Image:
    """`decode_image` for a file; errors name the file.

    Raises:
        NotFound: the file does not exist.
        InvalidInput: the file is not a usable PNG/JPEG image (see `decode_image`).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"image {path} does not exist")
    try:
        return decode_image(path.read_bytes(), formats)
    except InvalidInput as err:
        raise InvalidInput(f"{path} is not a readable image: {err.reason}") from None


def _apply_orientation(image: Image.Image) -> None:
    """Rotate or flip `image` in place as its EXIF Orientation tag says (2-8; 1 is upright)."""
    from PIL import ExifTags, ImageOps

    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # Pillow's EXIF parser raises many types; viewers ignore a broken block
        return
    if orientation in range(2, 9):
        ImageOps.exif_transpose(image, in_place=True)


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
