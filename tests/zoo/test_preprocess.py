from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnzoo import zoo
from cnnzoo.errors import InvalidInput
from cnnzoo.zoo.preprocess import Preprocess

ROOT = Path(__file__).resolve().parents[2]
DIGIT = ROOT / "examples" / "digits" / "7" / "test-00000.png"


@pytest.mark.parametrize("name", ["lenet5-mnist", "resnet20-cifar10", "resnet50-imagenet"])
@pytest.mark.parametrize("size", [(28, 28), (37, 50), (300, 200), (20, 20)])
def test_numpy_path_equals_torchvision_path(name, size):
    preprocess = zoo.get_entry(name).preprocess
    pixels = np.random.default_rng(1).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    ours = preprocess.apply(image)
    theirs = preprocess.torch_transform()(image).numpy()
    assert ours.dtype == np.float32
    assert ours.shape == theirs.shape == (preprocess.channels, *preprocess.input_size)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_mnist_digit_is_padded_with_background():
    preprocess = zoo.get_entry("lenet5-mnist").preprocess
    array = preprocess.apply(Image.open(DIGIT))
    assert array.shape == (1, 32, 32)
    background = (0.0 - 0.1307) / 0.3081
    border = np.concatenate([array[0, :2].ravel(), array[0, -2:].ravel(), array[0, :, :2].ravel()])
    np.testing.assert_allclose(border, background, rtol=1e-6)
    # the centre is the digit itself, normalised by hand
    raw = np.asarray(Image.open(DIGIT), dtype=np.float32) / 255.0
    np.testing.assert_allclose(array[0, 2:30, 2:30], (raw - 0.1307) / 0.3081, rtol=1e-5, atol=1e-6)


def test_parameters_round_trip_for_every_entry():
    for name in zoo.list_models():
        preprocess = zoo.get_entry(name).preprocess
        params = preprocess.to_parameters()
        assert all(isinstance(v, str) for v in params.values())
        assert Preprocess.from_parameters({**params, "zoo_entry": name}) == preprocess


def test_parameters_name_what_is_wrong():
    params = zoo.get_entry("lenet5-mnist").preprocess.to_parameters()
    with pytest.raises(InvalidInput, match="'mean'"):
        Preprocess.from_parameters({k: v for k, v in params.items() if k != "mean"})
    with pytest.raises(InvalidInput, match="input_size"):
        Preprocess.from_parameters({**params, "input_size": "28,28"})
    with pytest.raises(InvalidInput, match="colour"):
        Preprocess.from_parameters({**params, "colour": "CMYK"})


def test_inconsistent_preprocess_is_refused():
    with pytest.raises(InvalidInput):
        Preprocess(colour="RGB", resize=0, crop=32, pad=0, mean=(0.5,), std=(0.5,))
    with pytest.raises(InvalidInput):
        Preprocess(colour="L", resize=0, crop=0, pad=0, mean=(0.5,), std=(0.5,))
