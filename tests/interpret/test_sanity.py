"""The Adebayo et al. model-randomisation check (documented behaviour, not a gate)."""

from __future__ import annotations

import pytest
import torch

from cnnzoo.interpret.rules import Rule
from cnnzoo.interpret.sanity import cascading_randomisation, rank_correlation
from tests.interpret.helpers import DTYPE, ConvNet


def test_rank_correlation_by_hand() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(1.0)  # absolute values are ranked
    assert rank_correlation(a, torch.tensor([4.0, 3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # ranks [0,1,2,3] vs [1,0,3,2]: centred [-1.5,-.5,.5,1.5] . [-.5,-1.5,1.5,.5] = 3 over 5
    assert rank_correlation(a, torch.tensor([2.0, 1.0, 4.0, 3.0])) == pytest.approx(0.6)


def test_cascade_leaves_the_model_alone() -> None:
    model = ConvNet(pool=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = ConvNet.inputs(4, pool=True)
    result = cascading_randomisation(
        model, x, ["fc", "conv2", "conv1"], [Rule.GRADIENT, Rule.GUIDED]
    )
    assert result.stages == ("trained", "fc", "conv2", "conv1")
    assert (
        result.maps["gradient"].shape == (4, 4, 10, 10) and result.maps["gradient"].dtype == DTYPE
    )
    assert result.correlation["guided-backprop"][0] == pytest.approx(1.0)
    assert all(-1.0 <= c <= 1.0 for values in result.correlation.values() for c in values)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Every stage really re-initialised something: the fully random model's maps differ.
    assert not torch.equal(result.maps["gradient"][0], result.maps["gradient"][-1])
