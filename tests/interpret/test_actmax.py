"""Activation maximisation: each regulariser does what the docstring says, the result does not
depend on how units are batched, and it stays within real pixel values."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from cnnzoo import zoo
from cnnzoo.errors import InvalidInput
from cnnzoo.interpret.actmax import Regularisers, maximise_units

UNITS = [(0, 5, 5), (5, 5, 5), (9, 2, 7), (15, 0, 0)]
STILL = {"learning_rate": 0.0, "l2_decay": 0.0, "blur_every": 0, "jitter": 0}
STILL["clip_percentile"] = 0.0


@pytest.fixture(scope="module")
def lenet() -> torch.nn.Module:
    return zoo.build_model("lenet5-mnist", weights="default").double()


def _run(model, regularisers, units=UNITS, **kwargs):
    return maximise_units(
        model, "features.c3", units, (1, 32, 32), regularisers=regularisers, **kwargs
    )


def test_each_regulariser_by_hand(lenet) -> None:
    noise = _run(lenet, Regularisers(steps=1, **STILL)).images  # no step moves anything
    assert noise.shape == (4, 1, 32, 32) and 0.05 < float(noise.std()) < 0.2
    decayed = _run(lenet, Regularisers(steps=1, **{**STILL, "l2_decay": 0.5})).images
    torch.testing.assert_close(decayed, noise * 0.5, rtol=0, atol=0)
    blurred = _run(lenet, Regularisers(steps=1, **{**STILL, "blur_every": 1, "blur_sigma": 1.0}))
    torch.testing.assert_close(blurred.images, gaussian_blur(noise, [5, 5], [1.0, 1.0]))
    clipped = _run(lenet, Regularisers(steps=1, **{**STILL, "clip_percentile": 50.0})).images
    zeroed = (clipped == 0).flatten(1).sum(dim=1)
    assert all(500 <= int(n) <= 524 for n in zeroed)  # half of each image's 1024 pixels
    assert torch.equal(clipped[clipped != 0], noise[clipped != 0])


def test_batching_does_not_change_the_result(lenet) -> None:
    settings = Regularisers(steps=15)
    together = _run(lenet, settings, batch_size=4)
    alone = _run(lenet, settings, batch_size=1)
    assert torch.equal(together.images, alone.images)  # float64: to the bit
    assert torch.equal(together.activation, alone.activation)
    again = _run(lenet, settings, batch_size=3)
    assert torch.equal(again.images, together.images)
    other_seed = _run(lenet, settings, batch_size=4, seed=1)
    assert not torch.equal(other_seed.images, together.images)
    assert bool((together.activation > together.start).all())


def test_images_stay_within_real_pixel_values(lenet) -> None:
    entry = zoo.get_entry("lenet5-mnist")
    (mean,), (std,) = entry.preprocess.mean, entry.preprocess.std
    low, high = (0 - mean) / std, (1 - mean) / std
    result = _run(lenet, Regularisers(steps=20, learning_rate=1.0), bounds=([low], [high]))
    assert float(result.images.min()) >= low and float(result.images.max()) <= high


def test_bad_units_and_settings_are_refused(lenet) -> None:
    with pytest.raises(InvalidInput, match="outside layer 'features.c3'.s output of 16 channels"):
        _run(lenet, Regularisers(steps=1), units=[(16, 0, 0)])
    with pytest.raises(InvalidInput, match="outside layer"):
        _run(lenet, Regularisers(steps=1), units=[(0, 10, 0)])
    with pytest.raises(InvalidInput, match="l2_decay"):
        Regularisers(l2_decay=1.0)
