"""The upper bounds of what a job may ask for, so no job file can exhaust memory, disk or time.

Each bound is the smaller of what the model and the dataset allow (a channel has at most as many
top-k entries as the job has images; a layer has so many channels; a batch of preprocessed images
must fit in `MAX_BATCH_BYTES`) and a fixed ceiling for what the gallery can show. A job that asks
for more is refused before any work, with the bound and why.
"""

from __future__ import annotations

from cnnzoo.errors import JobFileError

__all__ = [
    "MAX_ANALYSES",
    "MAX_BATCH_BYTES",
    "MAX_IMAGES",
    "MAX_JOB_FILE_BYTES",
    "MAX_QUALITY_IMAGES",
    "MAX_RANDOMISATION_IMAGES",
    "MAX_STEPS",
    "MAX_TILES",
    "MAX_TOP_K",
    "MAX_UNITS",
    "MAX_WORKERS",
    "at_most",
    "batch_limit",
    "top_k_limit",
]

MAX_JOB_FILE_BYTES = 1 << 20  # a job file is a page of settings, not data
MAX_ANALYSES = 64
MAX_TOP_K = 256  # tiles on one channel page
MAX_TILES = 20_000  # top-k tiles (projections, two PNGs each) of one analysis
MAX_IMAGES = 1024  # images one per-image analysis lists
MAX_RANDOMISATION_IMAGES = 64  # held at once, with a map per stage and method
MAX_QUALITY_IMAGES = 10_000  # images of one explanation-quality analysis (64 per part)
MAX_STEPS = 10_000  # gradient-ascent steps of activation maximisation
MAX_UNITS = 4096  # synthetic images of one analysis
MAX_WORKERS = 64  # data-loader processes
MAX_BATCH_BYTES = 1 << 30  # one batch of preprocessed float32 images


def batch_limit(input_shape: tuple[int, ...]) -> int:
    """The largest batch of `input_shape` float32 images within `MAX_BATCH_BYTES`."""
    size = 4
    for side in input_shape:
        size *= int(side)
    return max(1, MAX_BATCH_BYTES // size)


def top_k_limit(images: int) -> tuple[int, str]:
    """How many top-k entries a channel can have, and why: each image enters a channel's table
    at most once, and a channel page shows at most `MAX_TOP_K` tiles."""
    if images < MAX_TOP_K:
        return images, f"the job has {images} images, and each enters a channel's table once"
    return MAX_TOP_K, f"a channel page shows at most {MAX_TOP_K} tiles"


def at_most(where: str, key: str, value: int, bound: int, why: str) -> int:
    """`value` if it is at most `bound`, else a `JobFileError` naming the key, the bound and why
    (e.g. "the job has 20 images")."""
    if value > bound:
        raise JobFileError(
            f"{where}: {key} = {value} is more than {bound}, the most allowed ({why})"
        )
    return value
