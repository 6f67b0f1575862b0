"""Image preprocessing shared by training, evaluation, export and serving.

One `Preprocess` value describes the whole pipeline: colour conversion, shorter-side resize,
centre crop, zero padding and normalisation. `apply` runs it with Pillow and numpy only (the
server never imports torch for it); `torch_transform` builds the torchvision equivalent for
datasets. Both give the same array for the same image. `to_parameters`/`from_parameters` carry
it through `config.pbtxt` parameters and ONNX `metadata_props`, so nobody retypes mean and std.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnzoo.errors import InvalidInput

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Preprocess", "PARAMETER_KEYS"]

_COLOURS = {"L": 1, "RGB": 3}

# Keys `to_parameters` writes; `from_parameters` ignores any other key (zoo_entry, dataset, ...).
PARAMETER_KEYS = ("colour", "resize", "crop", "pad", "mean", "std", "input_size")


@dataclass(frozen=True)
class Preprocess:
    """How a PIL image becomes a normalised float32 CHW array.

    Steps, in order: convert to `colour`; resize the shorter side to `resize` (bilinear, 0 = keep);
    centre crop to `crop` x `crop` (0 = keep); pad `pad` black pixels on each side; scale to
    [0, 1]; subtract `mean` and divide by `std` per channel.

    The padding is black in pixel space (value 0 before normalisation), as torchvision's
    `Pad(fill=0)` does: MNIST's 28x28 digits become LeNet-5's 32x32 input with a background border.
    """

    colour: str
    resize: int
    crop: int
    pad: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.colour not in _COLOURS:
            raise InvalidInput(f"colour must be one of {sorted(_COLOURS)}, got {self.colour!r}")
        channels = _COLOURS[self.colour]
        if len(self.mean) != channels or len(self.std) != channels:
            raise InvalidInput(
                f"colour {self.colour} needs {channels} mean and std values, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise InvalidInput(f"std values must be positive, got {self.std}")
        if min(self.resize, self.crop, self.pad) < 0:
            raise InvalidInput("resize, crop and pad must be >= 0")
        if not (self.crop or self.resize):
            raise InvalidInput("set crop (or resize) so the model input has a fixed size")

    @property
    def channels(self) -> int:
        return _COLOURS[self.colour]

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the array `apply` returns."""
        side = (self.crop or self.resize) + 2 * self.pad
        return side, side

    # -- numpy path (serving) -------------------------------------------------------------

    def apply(self, image: Image.Image) -> np.ndarray:
        """Preprocess one image with Pillow and numpy.

        Args:
            image: any PIL image; it is converted to `colour` first.

        Returns:
            float32 array of shape (C, H, W) with H, W = `input_size`.
        """
        return self.normalise(self.pixels(image))

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The geometric steps only (colour, resize, crop, pad): uint8 array (C, H, W).

        What a model exported with `--input-dtype uint8` takes: it scales and normalises
        inside its graph.
        """
        from PIL import Image as PILImage

        image = image.convert(self.colour)
        if self.resize:
            width, height = image.size
            size = _shorter_side_size(width, height, self.resize)
            if size != (width, height):
                image = image.resize(size, PILImage.Resampling.BILINEAR)
        if self.crop:
            image = _centre_crop(image, self.crop)
        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.pad:
            p = self.pad
            pixels = np.pad(pixels, ((p, p), (p, p), (0, 0)), mode="constant", constant_values=0)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (C, H, W) pixels to the model's float32 input: [0, 1], then mean and std."""
        array = pixels.astype(np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return np.ascontiguousarray((array - mean) / std, dtype=np.float32)

    # -- torch path (datasets) ------------------------------------------------------------

    def torch_transform(self, augment: Any = None) -> Any:
        """The torchvision transform equivalent to `apply`, returning a float32 CHW tensor.

        Args:
            augment: optional transform inserted after crop and padding, before `ToTensor`
                (training augmentation on the PIL image).
        """
        from torchvision import transforms

        steps: list[Any] = [_ConvertColour(self.colour)]
        if self.resize:
            steps.append(
                transforms.Resize(self.resize, interpolation=transforms.InterpolationMode.BILINEAR)
            )
        if self.crop:
            steps.append(transforms.CenterCrop(self.crop))
        if self.pad:
            steps.append(transforms.Pad(self.pad, fill=0))
        if augment is not None:
            steps.append(augment)
        steps += [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        return transforms.Compose(steps)

    # -- serialisation ----------------------------------------------------------------------

    def to_parameters(self) -> dict[str, str]:
        """String key/values for config.pbtxt `parameters` and ONNX `metadata_props`."""
        height, width = self.input_size
        return {
            "colour": self.colour,
            "resize": str(self.resize),
            "crop": str(self.crop),
            "pad": str(self.pad),
            "mean": ",".join(repr(float(m)) for m in self.mean),
            "std": ",".join(repr(float(s)) for s in self.std),
            "input_size": f"{height},{width}",
        }

    @classmethod
    def from_parameters(cls, mapping: Mapping[str, str]) -> Preprocess:
        """Rebuild from `to_parameters` output; other keys are ignored.

        Raises:
            InvalidInput: a key is missing or a value does not parse (names the key).
        """
        try:
            result = cls(
                colour=mapping["colour"],
                resize=int(mapping["resize"]),
                crop=int(mapping["crop"]),
                pad=int(mapping["pad"]),
                mean=tuple(float(v) for v in mapping["mean"].split(",")),
                std=tuple(float(v) for v in mapping["std"].split(",")),
            )
        except KeyError as err:
            raise InvalidInput(f"preprocessing parameter {err.args[0]!r} is missing") from None
        except ValueError as err:
            raise InvalidInput(f"preprocessing parameters do not parse: {err}") from None
        size = mapping.get("input_size")
        if size is not None and size != ",".join(map(str, result.input_size)):
            raise InvalidInput(
                f"preprocessing parameter input_size={size!r} disagrees with crop/resize/pad "
                f"({result.input_size[0]},{result.input_size[1]})"
            )
        return result


class _ConvertColour:
    """PIL colour conversion as a picklable transform (lambdas do not pickle)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def _shorter_side_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(W, H) after resizing the shorter side to `side`, rounded as torchvision's Resize does."""
    if width <= height:
        return side, int(side * height / width)
    return int(side * width / height), side


def _centre_crop(image: Image.Image, size: int) -> Image.Image:
    """Centre crop as torchvision's CenterCrop: pads with black when the image is smaller."""
    from PIL import Image as PILImage

    width, height = image.size
    if width < size or height < size:
        canvas = PILImage.new(image.mode, (max(width, size), max(height, size)), 0)
        canvas.paste(image, ((max(width, size) - width) // 2, (max(height, size) - height) // 2))
        image = canvas
        width, height = image.size
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))
