"""INTERPRET-FACTS 16 and the three maps of Zeiler & Fergus Fig. 7."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnzoo.errors import InvalidInput
from cnnzoo.interpret.occlusion import OcclusionSensitivity, default_window, occlusion_maps
from tests.interpret.helpers import DTYPE


def test_fact16_one_pixel_occlusion_of_a_linear_model_is_w_times_x() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 3)).to(DTYPE)
    x = torch.randn(1, 1, 5, 5, dtype=DTYPE)
    occlusion = OcclusionSensitivity(model, window=1, stride=1, scores="logit")
    attribution = occlusion.attribute(x, target=2)
    expected = model[1].weight[2].view(5, 5) * x[0, 0]
    # Captum's Occlusion divides its sums in float32, hence the tolerance.
    assert torch.allclose(attribution[0, 0].double(), expected, rtol=1e-6, atol=1e-6)


class Quadrant(nn.Module):
    """logit 0 = sum of the top-left 4x4 quadrant of an 8x8 image, logit 1 = 0; the "feature
    layer" is the quadrant itself (two channels: the quadrant and its negative)."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quadrant = self.feature(torch.cat([x[:, :, :4, :4], -x[:, :, :4, :4]], dim=1))
        score = quadrant[:, 0].flatten(1).sum(dim=1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_fig7_maps_follow_the_object() -> None:
    x = torch.full((1, 1, 8, 8), 0.5, dtype=DTYPE)  # quadrant sum 8 -> p(class 0) = sigmoid(8)
    maps = occlusion_maps(Quadrant(), x, true_class=0, feature_layer="feature", window=2, stride=2)
    assert maps.probability.shape == (4, 4) and maps.feature_channel == 0
    covers = torch.zeros(4, 4, dtype=torch.bool)
    covers[:2, :2] = True  # squares at rows/cols 0 and 2 overlap the quadrant
    unoccluded = torch.sigmoid(torch.tensor(8.0, dtype=DTYPE))
    occluded = torch.sigmoid(torch.tensor(6.0, dtype=DTYPE))  # 4 pixels of 0.5 hidden
    assert torch.allclose(maps.probability[~covers], unoccluded.expand(12))
    assert torch.allclose(maps.probability[covers], occluded.expand(4))
    assert torch.equal(maps.activation[covers], torch.full((4,), 6.0, dtype=DTYPE))
    assert torch.equal(maps.activation[~covers], torch.full((12,), 8.0, dtype=DTYPE))
    assert torch.equal(maps.top_label, torch.zeros(4, 4, dtype=torch.long))
    assert maps.box(1, 3) == (2, 6, 4, 8)


def test_default_window_covers_the_image() -> None:
    for size in (28, 32, 224, 227):
        window, stride = default_window(size)
        assert (size - window) % stride == 0 and window <= size


def test_bad_window_is_refused() -> None:
    with pytest.raises(InvalidInput, match="window"):
        OcclusionSensitivity(nn.Flatten(), window=9).attribute(torch.zeros(1, 1, 4, 4), target=0)
