"""Each explanation-quality metric equals an independent reference on the same inputs.

References: Quantus 0.6.0 (PixelFlipping, RegionPerturbation, ROAD and its
`noisy_linear_imputation`, MPRT, RandomLogit), scikit-image's `structural_similarity`, SciPy's
`spearmanr`, and, for Average Drop (which Quantus lacks), the formula of Chattopadhay et al.
(2018) evaluated image by image with the PyTorch model. Tolerances: 1e-9 where both sides
compute in float64 on the same numbers; 1e-5 on probabilities, where the model runs in float32
on batches of different sizes.

Maps get a tiny random jitter first: Quantus orders features with NumPy's unstable quicksort,
so tied values could be removed in a different order than ours (stable, row-major).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnzoo import zoo
from cnnzoo.interpret.quality.confidence import confidence_change
from cnnzoo.interpret.quality.curves import perturbation_curves
from cnnzoo.interpret.quality.fillings import linear_imputation
from cnnzoo.interpret.quality.sanity import model_randomisation, random_logit
from cnnzoo.interpret.quality.settings import QualitySettings, softmax
from cnnzoo.interpret.quality.similarity import rank_correlation, similarity, ssim
from cnnzoo.interpret.torch_backend import explainer, method_maps, model_callable
from cnnzoo.zoo.datasets import get_dataset

quantus = pytest.importorskip("quantus")
from quantus.functions.perturb_func import noisy_linear_imputation  # noqa: E402
from quantus.helpers.model.pytorch_model import PyTorchModel  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from skimage.metrics import structural_similarity  # noqa: E402


def _images(name: str, dataset: str, n: int, data_dir: Path) -> tuple[torch.nn.Module, np.ndarray]:
    entry = zoo.get_entry(name)
    images = get_dataset(
        dataset, "test", data_dir=str(data_dir), transform=entry.preprocess.torch_transform()
    )
    x = torch.stack([images[i][0] for i in range(n)]).numpy()
    return zoo.build_model(name, weights="default").eval(), x


def _jitter(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    scale = 1e-6 * np.abs(maps).max(axis=(1, 2), keepdims=True)
    return maps + scale * np.random.default_rng(seed).standard_normal(maps.shape)


@pytest.fixture(scope="module")
def lenet(data_dir: Path) -> dict:
    model, x = _images("lenet5-mnist", "mnist", 8, data_dir)
    forward = model_callable(model)
    targets = forward(x).argmax(axis=1)
    maps = method_maps(model, ["gradient"], x, targets)["gradient"]
    return {"model": model, "x": x, "targets": targets, "maps": _jitter(maps), "forward": forward}


def _quantus(metric, case: dict, maps: np.ndarray, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Quantus' own advice on parameterisation
        return metric(
            model=case["model"],
            x_batch=case["x"],
            y_batch=case["targets"],
            a_batch=maps[:, None],
            device="cpu",
            batch_size=256,
            **kwargs,
        )


def test_rank_correlation_equals_scipy_with_ties() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=(6, 7, 7)).astype(float)  # many ties
    b = rng.integers(0, 5, size=(6, 7, 7)).astype(float)
    b[0] = a[0] * 2 + 1
    expected = [spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(6)]
    np.testing.assert_allclose(rank_correlation(a, b), expected, atol=1e-12)
    assert rank_correlation(a[:1], b[:1])[0] == pytest.approx(1.0)
    # a map without variation: undefined for scipy, 0 here
    assert rank_correlation(np.zeros((1, 3, 3)), a[:1, :3, :3])[0] == 0.0


@pytest.mark.parametrize("shape", [(32, 32), (9, 12), (5, 6)])
def test_ssim_equals_scikit_image(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(2)
    a = rng.random((4, *shape))
    b = 0.6 * a + 0.4 * rng.random((4, *shape))
    ours = ssim(a, b)
    for i in range(4):
        span = max(a[i].max(), b[i].max()) - min(a[i].min(), b[i].min())
        window = min(7, *shape)
        window -= 1 - window % 2
        expected = structural_similarity(a[i], b[i], data_range=span, win_size=window)
        assert ours[i] == pytest.approx(expected, abs=1e-12)
    assert ssim(a[:1], a[:1])[0] == pytest.approx(1.0)
    assert ssim(np.ones((1, 8, 8)), np.ones((1, 8, 8)))[0] == 1.0


def test_linear_imputation_equals_quantus_noise_free() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 3, 32, 32))
    removed = rng.random((12, 32, 32)) < np.linspace(0.02, 0.98, 12)[:, None, None]
    ours = linear_imputation(x, removed)
    for i in range(12):
        expected = noisy_linear_imputation(x[i], np.nonzero(removed[i].ravel())[0], noise=0.0)
        np.testing.assert_allclose(ours[i], expected, atol=1e-9)
    np.testing.assert_array_equal(
        ours[~removed[:, None].repeat(3, 1)], x[~removed[:, None].repeat(3, 1)]
    )


def test_deletion_equals_quantus_pixel_flipping(lenet: dict) -> None:
    settings = QualitySettings(steps=16, fillings=("mean",))
    ours = perturbation_curves(
        lenet["forward"], lenet["x"], lenet["targets"], {"g": lenet["maps"]}, settings, "mean"
    )["g"]
    metric = quantus.PixelFlipping(
        features_in_step=64, perturb_baseline=0.0, normalise=False, disable_warnings=True
    )
    expected = np.array(_quantus(metric, lenet, lenet["maps"]))  # after each of 16 steps
    np.testing.assert_allclose(ours.deletion.probability[:, 1:], expected, atol=1e-5)
    # the area: the trapezoid over the fraction removed, the unperturbed image first
    first = softmax(lenet["forward"](lenet["x"]))[np.arange(8), lenet["targets"]]
    area = np.trapezoid(np.column_stack([first, expected]), dx=1 / 16, axis=1)
    np.testing.assert_allclose(ours.deletion.area(), area, atol=1e-5)


def test_insertion_equals_quantus_pixel_flipping_least_relevant_first(lenet: dict) -> None:
    # Inserting the k most relevant pixels into the blank image leaves what deleting the
    # 1024 - k least relevant pixels leaves: Quantus' pixel flipping of the negated map.
    settings = QualitySettings(steps=16, fillings=("mean",))
    ours = perturbation_curves(
        lenet["forward"], lenet["x"], lenet["targets"], {"g": lenet["maps"]}, settings, "mean"
    )["g"]
    metric = quantus.PixelFlipping(
        features_in_step=64, perturb_baseline=0.0, normalise=False, disable_warnings=True
    )
    expected = np.array(_quantus(metric, lenet, -lenet["maps"]))
    np.testing.assert_allclose(ours.insertion.probability[:, :16], expected[:, ::-1], atol=1e-5)


def test_regions_equal_quantus_region_perturbation(lenet: dict) -> None:
    settings = QualitySettings(steps=64, region=4, fillings=("mean",))
    ours = perturbation_curves(
        lenet["forward"], lenet["x"], lenet["targets"], {"g": lenet["maps"]}, settings, "mean"
    )["g"]
    metric = quantus.RegionPerturbation(
        patch_size=4,
        regions_evaluation=20,
        perturb_baseline=0.0,
        normalise=False,
        disable_warnings=True,
    )
    drops = np.array(_quantus(metric, lenet, lenet["maps"]))  # p0 - p after each region
    p = ours.deletion.probability
    np.testing.assert_allclose(p[:, :1] - p[:, 1:21], drops, atol=1e-5)


def test_rgb_deletion_equals_quantus_on_whole_pixels(data_dir: Path) -> None:
    # Quantus flattens channels into features: 64 of them per step is a third of 64 pixels, so
    # every third of its points is one of ours.
    model, x = _images("resnet20-cifar10", "cifar10", 3, data_dir)
    forward = model_callable(model)
    targets = forward(x).argmax(axis=1)
    maps = _jitter(method_maps(model, ["guided-backprop"], x, targets)["guided-backprop"])
    settings = QualitySettings(steps=16, fillings=("mean",))
    ours = perturbation_curves(forward, x, targets, {"g": maps}, settings, "mean")["g"]
    metric = quantus.PixelFlipping(
        features_in_step=64, perturb_baseline=0.0, normalise=False, disable_warnings=True
    )
    case = {"model": model, "x": x, "targets": targets}
    expected = np.array(_quantus(metric, case, maps))  # 48 points
    np.testing.assert_allclose(ours.deletion.probability[:, 1:], expected[:, 2::3], atol=1e-5)


def test_road_equals_quantus_road(lenet: dict) -> None:
    # Quantus' ROAD reports whether the class survives (accuracy) after removing p % of the
    # pixels, most relevant first; its imputation indexes pixels with the flattened
    # channel-and-pixel order, so it runs on one-channel images only (MNIST here).
    settings = QualitySettings(steps=16, fillings=("road",), noise=0.0)
    ours = perturbation_curves(
        lenet["forward"], lenet["x"], lenet["targets"], {"g": lenet["maps"]}, settings, "road"
    )["g"]
    percentages = [100 * s / 16 for s in range(1, 16)]
    for maps, curve in ((lenet["maps"], ours.deletion), (-lenet["maps"], ours.insertion)):
        metric = quantus.ROAD(percentages=percentages, noise=0.0, normalise=False)
        accuracy = _quantus(metric, lenet, maps)
        expected = np.array([accuracy[p] for p in percentages])
        found = curve.hit.mean(axis=0)
        # deletion: after s/16 removed; insertion of k = removal of the 1 - k least relevant
        found = found[1:16] if curve is ours.deletion else found[15:0:-1]
        np.testing.assert_array_equal(found, expected)


def test_road_noise_is_seeded_per_image_and_step(lenet: dict) -> None:
    settings = QualitySettings(steps=4, fillings=("road",), batch_size=3)
    args = (lenet["forward"], lenet["x"], lenet["targets"], {"g": lenet["maps"]})
    one = perturbation_curves(*args, settings, "road", ids=np.arange(10, 18))["g"]
    again = perturbation_curves(
        *args, QualitySettings(steps=4, fillings=("road",), batch_size=64), "road",
        ids=np.arange(10, 18),
    )["g"]  # fmt: skip
    np.testing.assert_allclose(one.deletion.probability, again.deletion.probability, atol=1e-6)
    other = perturbation_curves(*args, settings, "road", ids=np.arange(20, 28))["g"]
    assert not np.allclose(one.deletion.probability, other.deletion.probability)


def _ssim_2d(shape):
    def inner(a, b, batched=True, **kwargs):
        out = []
        for x, y in zip(a, b, strict=True):
            x2, y2 = x.reshape(shape), y.reshape(shape)
            span = max(x2.max(), y2.max()) - min(x2.min(), y2.min())
            out.append(structural_similarity(x2, y2, data_range=span))
        return np.array(out)

    return inner


def _quantus_explain(method: str):
    def explain(model, inputs, targets, **kwargs):
        return explainer(model, method)(np.asarray(inputs, dtype=np.float32), np.asarray(targets))[
            :, None
        ]

    return explain


@pytest.mark.parametrize("method", ["gradient", "guided-backprop"])
def test_mprt_equals_quantus_mprt(lenet: dict, method: str) -> None:
    # The same randomised models on both sides: Quantus' own cascade (every module with
    # reset_parameters, top down) drives our stages.
    model, x, targets = lenet["model"], lenet["x"], lenet["targets"]
    original = {method: method_maps(model, [method], x, targets)[method]}
    wrapper = PyTorchModel(model, channel_first=True, softmax=False, device="cpu")
    stages = (
        (name, {method: explainer(randomised, method)})
        for name, randomised in wrapper.get_random_layer_generator(order="top_down", seed=42)
    )
    ours = model_randomisation(stages, x, targets, original)[method]
    per_sample = {"normalise_func_kwargs": {"normalise_axes": (1, 2, 3)}}
    for measure, kwargs in (
        ("rank_abs", {"abs": True, "normalise": True, **per_sample}),
        ("rank_signed", {"abs": False, "normalise": False}),
        ("ssim", {"abs": True, "normalise": True, "similarity_func": _ssim_2d((32, 32)),
                  **per_sample}),
    ):  # fmt: skip
        metric = quantus.MPRT(seed=42, layer_order="top_down", disable_warnings=True, **kwargs)
        found = _quantus(metric, lenet, original[method], explain_func=_quantus_explain(method))
        layers = [k for k in found if k != "original"]
        assert tuple(layers) == ours.stages
        expected = np.array([found[k] for k in layers])
        np.testing.assert_allclose(ours.per_stage(measure), expected, atol=1e-9)


def test_random_logit_equals_quantus_random_logit(lenet: dict) -> None:
    model, x, targets = lenet["model"], lenet["x"], lenet["targets"]
    asked = []

    def recording(model, inputs, targets, **kwargs):
        asked.append(np.asarray(targets))
        return _quantus_explain("gradient")(model, inputs, targets)

    original = method_maps(model, ["gradient"], x, targets)["gradient"]
    metric = quantus.RandomLogit(
        num_classes=10,
        seed=7,
        abs=True,
        normalise=True,
        normalise_func_kwargs={"normalise_axes": (1, 2, 3)},
        similarity_func=_ssim_2d((32, 32)),
        disable_warnings=True,
    )
    expected = _quantus(metric, lenet, original, explain_func=recording)
    others = asked[-1]
    assert np.all(others != targets)
    ours = random_logit(
        {"gradient": explainer(model, "gradient")}, x, others, {"gradient": original}
    )
    np.testing.assert_allclose(ours["gradient"].ssim, expected, atol=1e-9)
    assert ours["gradient"].ssim.shape == (8,)


def test_average_drop_equals_the_formula_image_by_image(lenet: dict) -> None:
    model, x, targets = lenet["model"], lenet["x"], lenet["targets"]
    maps = method_maps(model, ["grad-cam"], x, targets)["grad-cam"]
    y = softmax(lenet["forward"](x))[np.arange(8), targets]
    found = confidence_change(lenet["forward"], x, targets, maps, y, batch_size=3)
    drops, increases = [], []
    with torch.no_grad():
        for i in range(8):
            cam = torch.from_numpy(maps[i]).double().clamp(min=0)
            mask = cam / cam.max() if cam.max() > 0 else cam
            image = torch.from_numpy(x[i]).double()
            yc = torch.softmax(model(image[None].float()), 1)[0, targets[i]].item()
            oc = torch.softmax(model((image * mask)[None].float()), 1)[0, targets[i]].item()
            drops.append(max(0.0, yc - oc) / yc)
            increases.append(oc > yc)
    np.testing.assert_allclose(found.drop, drops, atol=1e-5)
    np.testing.assert_array_equal(found.increase, increases)
    assert 0 < 100 * found.drop.mean() < 100


def test_similarity_measures_agree_with_their_parts() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((3, 10, 10)), rng.standard_normal((3, 10, 10))
    s = similarity(a, b)
    np.testing.assert_allclose(s.rank_abs, rank_correlation(np.abs(a), np.abs(b)))
    np.testing.assert_allclose(s.rank_signed, rank_correlation(a, b))
    scaled = np.abs(a) / np.abs(a).max(axis=(1, 2), keepdims=True)
    other = np.abs(b) / np.abs(b).max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(s.ssim, ssim(scaled, other))


def test_baselines_are_per_image_whatever_the_batch() -> None:
    from scipy import ndimage

    from cnnzoo.interpret.quality.baselines import edge_map, random_map

    x = np.random.default_rng(5).random((5, 3, 12, 10)).astype(np.float32)
    edges = edge_map(x)
    for i in range(5):
        grey = x[i].astype(np.float64).mean(axis=0)
        sobel = np.hypot(
            ndimage.sobel(grey, 0, mode="nearest"), ndimage.sobel(grey, 1, mode="nearest")
        )
        np.testing.assert_allclose(edges[i], sobel, atol=1e-12)
        np.testing.assert_array_equal(edge_map(x[i : i + 1])[0], edges[i])
    noise = random_map(x, seed=3)
    np.testing.assert_array_equal(random_map(x[3:4], seed=3)[0], noise[3])
    assert not np.array_equal(random_map(x, seed=4), noise)
    assert noise.shape == (5, 12, 10) and noise.min() >= 0 and noise.max() < 1
