"""INTERPRET-FACTS 1-13: the three ReLU rules on tiny float64 models with hand-worked answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnzoo.errors import UnsupportedModel
from cnnzoo.interpret.attribution import Deconvnet, Gradient, GuidedBackprop, for_method
from cnnzoo.interpret.projection import Unit, project_units
from cnnzoo.interpret.rules import Rule, relu_rule
from tests.interpret.helpers import (
    DTYPE,
    Boom,
    ConvNet,
    FunctionalRelu,
    NoRelu,
    OneConv,
    OneHidden,
    ParallelBranches,
    Scaled,
    flags,
    hooks_left,
    separate_relus,
)


# Captum's own classes warn on every call; only the tests that call them directly filter that.
def CAPTUM_WARNINGS(test):
    test = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning")(test)
    return pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require:UserWarning")(
        test
    )


RULES = [Rule.GRADIENT, Rule.DECONVNET, Rule.GUIDED]


def attribute(model: nn.Module, rule: Rule, x: torch.Tensor, target: int = 0) -> torch.Tensor:
    return for_method(model, rule).attribute(x, target=target)


def plain_gradient(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """d model(x)[:, target] / dx from autograd alone, with no rule machinery involved."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    return grad


def assert_rule_applied(maps: torch.Tensor, model: nn.Module, rule: Rule, x, target: int) -> None:
    """The gradient rule gives autograd's gradient; deconvnet and guided backprop must not (on
    these random ReLU nets some ReLU is off or some gradient negative, so a rule that did nothing
    would show here), which keeps the equality tests from passing with a no-op rule."""
    plain = plain_gradient(model, x, target)
    if rule is Rule.GRADIENT:
        assert torch.allclose(maps, plain, rtol=1e-12, atol=1e-15)
    else:
        assert not torch.allclose(maps, plain, rtol=1e-6, atol=1e-9), f"{rule} did nothing"


def same_weights(make, reference: nn.Module, **kwargs) -> nn.Module:
    model = make(**kwargs)
    model.load_state_dict(reference.state_dict())
    return model


# -- fact 1 ------------------------------------------------------------------------------------

CAPTUM_INPUT = torch.arange(16, dtype=DTYPE).view(1, 1, 4, 4)
# conv outputs: channel 0 = window sums - 50 = [[-5, 4], [31, 40]] (mask [[0,1],[1,1]]),
# channel 1 = window sums - 75 = [[-30, -21], [6, 15]] (mask [[0,0],[1,1]]); every fc output is
# 54 > 0, so the seed reaching relu1 is the fc row [1,1,1,1 | 1,-1,-1,-1].
# Guided: channel 0 passes [0,1,1,1], channel 1 passes relu([1,-1,-1,-1]) * mask = 0; the 3x3
# ones kernel then spreads the three active units over the 4x4 input.
GUIDED_EXPECTED = [[0, 1, 1, 1], [1, 3, 3, 2], [1, 3, 3, 2], [1, 2, 2, 1]]
# Deconvnet: channel 0 passes [1,1,1,1], channel 1 passes [1,0,0,0].
DECONV_EXPECTED = [[2, 3, 3, 1], [3, 5, 5, 2], [3, 5, 5, 2], [1, 2, 2, 1]]


@pytest.mark.parametrize("inplace", [False, True])
def test_fact1_captum_fixture(inplace: bool) -> None:
    model = OneConv(inplace=inplace)
    guided = GuidedBackprop(model).attribute(CAPTUM_INPUT, target=0)
    deconv = Deconvnet(model).attribute(CAPTUM_INPUT, target=0)
    assert torch.equal(guided[0, 0], torch.tensor(GUIDED_EXPECTED, dtype=DTYPE))
    assert torch.equal(deconv[0, 0], torch.tensor(DECONV_EXPECTED, dtype=DTYPE))


@CAPTUM_WARNINGS
def test_fact1_matches_captum_on_separate_modules() -> None:
    from captum.attr import Deconvolution
    from captum.attr import GuidedBackprop as CaptumGuided

    model = OneConv()
    assert torch.equal(
        GuidedBackprop(model).attribute(CAPTUM_INPUT, target=1),
        CaptumGuided(model).attribute(CAPTUM_INPUT, target=1),
    )
    assert torch.equal(
        Deconvnet(model).attribute(CAPTUM_INPUT, target=1),
        Deconvolution(model).attribute(CAPTUM_INPUT, target=1),
    )


# -- fact 2 ------------------------------------------------------------------------------------


def test_fact2_one_hidden_layer() -> None:
    # W x + b = [1+2+0, -1+1+0.5, 2-1-4] = [3, 0.5, -3]  ->  m = [1, 1, 0]
    model = OneHidden(W=[[1, 2], [-1, 1], [2, -1]], b=[0, 0.5, -4], v=[1, -2, 3])
    x = torch.tensor([[1.0, 1.0]], dtype=DTYPE)
    # gradient = W^T (v*m) = W^T [1, -2, 0] = [1 + 2, 2 - 2]
    assert Gradient(model).attribute(x).tolist() == [[3.0, 0.0]]
    # guided = W^T (relu(v)*m) = W^T [1, 0, 0]
    assert GuidedBackprop(model).attribute(x).tolist() == [[1.0, 2.0]]
    # deconv = W^T relu(v) = W^T [1, 0, 3] = [1 + 6, 2 - 3]
    assert Deconvnet(model).attribute(x).tolist() == [[7.0, -1.0]]


# -- fact 3 ------------------------------------------------------------------------------------


def test_fact3_no_relu_all_methods_equal() -> None:
    model = NoRelu()
    x = torch.randn(3, 2, 8, 8, dtype=DTYPE)
    maps = [attribute(model, rule, x, target=2) for rule in RULES]
    assert maps[0].abs().sum() > 0
    assert torch.equal(maps[0], maps[1]) and torch.equal(maps[0], maps[2])


# -- facts 4 and 5 -----------------------------------------------------------------------------


def test_fact4_all_relus_active_guided_equals_deconvnet() -> None:
    model = ConvNet()
    with torch.no_grad():
        model.conv1.weight.uniform_(0.1, 1.0)
        model.conv1.bias.uniform_(0.1, 1.0)
        model.conv2.weight.uniform_(0.1, 1.0)
        model.conv2.bias.uniform_(0.1, 1.0)
    x = torch.rand(2, 1, 8, 8, dtype=DTYPE) + 0.1  # positive: every pre-activation > 0
    guided = attribute(model, Rule.GUIDED, x)
    assert torch.equal(guided, attribute(model, Rule.DECONVNET, x))
    # The fc row has negative weights, so the rectification does change something here.
    assert not torch.allclose(guided, attribute(model, Rule.GRADIENT, x))


def test_fact5_nonnegative_weights_above_first_relu_guided_equals_gradient() -> None:
    model = ConvNet()
    with torch.no_grad():
        model.conv2.weight.abs_()
        model.fc.weight.abs_()
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    guided = attribute(model, Rule.GUIDED, x, target=1)
    assert torch.equal(guided, attribute(model, Rule.GRADIENT, x, target=1))
    assert not torch.allclose(guided, attribute(model, Rule.DECONVNET, x, target=1))


# -- facts 6 and 7 -----------------------------------------------------------------------------


def test_fact6_deconvnet_without_pooling_ignores_input_and_biases() -> None:
    model = ConvNet(pool=False)
    x1, x2 = torch.randn(1, 1, 8, 8, dtype=DTYPE), torch.randn(1, 1, 8, 8, dtype=DTYPE)
    d1 = attribute(model, Rule.DECONVNET, x1)
    assert torch.equal(d1, attribute(model, Rule.DECONVNET, x2))
    other_bias = same_weights(ConvNet, model, pool=False)
    with torch.no_grad():
        for module in (other_bias.conv1, other_bias.conv2, other_bias.fc):
            module.bias.uniform_(-3, 3)
    assert torch.equal(d1, attribute(other_bias, Rule.DECONVNET, x2))
    # The plain gradient does depend on the input.
    assert not torch.equal(attribute(model, Rule.GRADIENT, x1), attribute(model, Rule.GRADIENT, x2))


def _switches(model: ConvNet, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        pre = model.relu1(model.conv1(x).clone())
        return nn.functional.max_pool2d(pre, 2, return_indices=True)[1]


def test_fact6_deconvnet_with_pooling_depends_only_on_switches() -> None:
    model = ConvNet(pool=True)
    x1 = ConvNet.inputs(1, pool=True)
    x2 = x1 + 1e-3 * torch.randn_like(x1)  # same argmaxes, other values
    assert torch.equal(_switches(model, x1), _switches(model, x2))
    assert not torch.equal(x1, x2)
    assert torch.equal(attribute(model, Rule.DECONVNET, x1), attribute(model, Rule.DECONVNET, x2))
    x3 = torch.flip(x1, dims=[-1])  # other argmaxes -> another map
    assert not torch.equal(_switches(model, x1), _switches(model, x3))
    assert not torch.equal(
        attribute(model, Rule.DECONVNET, x1), attribute(model, Rule.DECONVNET, x3)
    )


@pytest.mark.parametrize("rule", RULES)
def test_fact7_pooled_seed_reaches_only_the_argmax(rule: Rule) -> None:
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)).to(DTYPE)
    x = torch.tensor([[[[1, 5, 0, 2], [3, 4, 9, 1], [7, 0, 2, 2], [6, 8, 3, 4]]]], dtype=DTYPE)
    # window (0, 1) = rows 0-1, cols 2-3 = [[0, 2], [9, 1]]: argmax at (1, 2);
    # window (1, 0) = rows 2-3, cols 0-1 = [[7, 0], [6, 8]]: argmax at (3, 1).
    maps = project_units(model, "1", x, [Unit(0, 0, 0, 1), Unit(0, 0, 1, 0)], rule=rule)
    first = torch.zeros(4, 4, dtype=DTYPE)
    first[1, 2] = 1
    second = torch.zeros(4, 4, dtype=DTYPE)
    second[3, 1] = 1
    assert torch.equal(maps[0, 0], first)
    assert torch.equal(maps[1, 0], second)


# -- facts 8 to 11 -----------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_fact8_seed_scaling(rule: Rule) -> None:
    model = ConvNet(pool=True)
    x = ConvNet.inputs(2, pool=True)
    base = attribute(model, rule, x, target=2)
    assert base.abs().sum() > 0
    assert torch.allclose(
        attribute(Scaled(model, 3.5), rule, x, target=2), 3.5 * base, rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("rule", RULES)
def test_fact9_bias_free_nets_are_scale_invariant(rule: Rule) -> None:
    model = ConvNet(pool=True, bias=False)
    x = ConvNet.inputs(2, pool=True)
    base = attribute(model, rule, x, target=0)
    assert torch.allclose(attribute(model, rule, 7.0 * x, target=0), base, rtol=1e-12, atol=0)


@pytest.mark.parametrize("rule", RULES)
def test_fact10_class_attribution_is_logit_neuron_attribution(rule: Rule) -> None:
    model = ConvNet(pool=True)
    x = ConvNet.inputs(3, pool=True)
    for target in range(3):
        neuron = project_units(model, "fc", x, [Unit(i, target) for i in range(3)], rule=rule)
        assert torch.equal(attribute(model, rule, x, target=target), neuron)


@pytest.mark.parametrize("rule", RULES)
def test_fact11_alone_or_in_a_batch(rule: Rule) -> None:
    model = nn.Sequential(ConvNet(pool=True), nn.BatchNorm1d(3)).to(DTYPE).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    x = ConvNet.inputs(5, pool=True)
    batch = attribute(model, rule, x, target=1)
    assert_rule_applied(batch, model, rule, x, target=1)
    for i in range(5):
        assert torch.allclose(
            attribute(model, rule, x[i : i + 1], target=1), batch[i : i + 1], rtol=1e-12, atol=1e-15
        )


# -- fact 12 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("make", [ConvNet, ParallelBranches])
def test_fact12_separate_shared_and_inplace_relus_agree(rule: Rule, make) -> None:
    reference = make()
    x = torch.randn(3, 1, 8, 8, dtype=DTYPE) if make is ConvNet else torch.randn(3, 4, dtype=DTYPE)
    expected = attribute(reference, rule, x)
    assert_rule_applied(expected, reference, rule, x, target=0)
    for shared in (False, True):
        for inplace in (False, True):
            model = same_weights(make, reference, shared=shared, inplace=inplace)
            assert torch.equal(attribute(model, rule, x), expected), (shared, inplace)


@CAPTUM_WARNINGS
def test_fact12_captum_deconvolution_misreads_a_shared_relu() -> None:
    """Why the rules are applied per call: Captum keeps one output gradient per ReLU module, so
    a module shared by interleaving branches reads the other call's gradient."""
    from captum.attr import Deconvolution

    reference = ParallelBranches()
    shared = same_weights(ParallelBranches, reference, shared=True)
    x = torch.randn(3, 4, dtype=DTYPE)
    captum_separate = Deconvolution(reference).attribute(x, target=0)
    assert torch.equal(Deconvnet(reference).attribute(x, target=0), captum_separate)
    assert not torch.allclose(Deconvolution(shared).attribute(x, target=0), captum_separate)
    assert torch.equal(Deconvnet(shared).attribute(x, target=0), captum_separate)


@pytest.mark.parametrize("rule", [Rule.DECONVNET, Rule.GUIDED])
def test_fact12_torchvision_resnet_reused_inplace_relu(rule: Rule) -> None:
    from torchvision.models import resnet18

    model = resnet18(num_classes=5).to(DTYPE).eval()
    assert model.layer1[0].relu.inplace
    x = torch.randn(2, 3, 40, 40, dtype=DTYPE)
    separate = separate_relus(model)
    relus = [m for m in separate.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 17 and not any(m.inplace for m in relus)  # 1 stem + 8 blocks x 2 calls
    maps = attribute(model, rule, x, target=3)
    assert torch.equal(maps, attribute(separate, rule, x, target=3))
    assert_rule_applied(maps, model, rule, x, target=3)


@pytest.mark.parametrize("spelling", ["F.relu", "torch.relu", "Tensor.relu"])
@pytest.mark.parametrize("rule", [Rule.DECONVNET, Rule.GUIDED])
def test_fact12_functional_relu_is_refused(spelling: str, rule: Rule) -> None:
    model = FunctionalRelu(spelling)
    with pytest.raises(UnsupportedModel, match="functional ReLU"):
        attribute(model, rule, torch.randn(2, 4, dtype=DTYPE))
    assert hooks_left(model) == []
    # The plain gradient is the true gradient whatever the spelling.
    assert attribute(model, Rule.GRADIENT, torch.randn(2, 4, dtype=DTYPE)).shape == (2, 4)


# -- fact 13 -----------------------------------------------------------------------------------


def _mixed_flags(model: nn.Module) -> None:
    model.train()
    model.fc1.eval()
    model.fc2.weight.requires_grad_(False)


@pytest.mark.parametrize("rule", RULES)
def test_fact13_model_left_as_found(rule: Rule) -> None:
    model = Boom()
    _mixed_flags(model)
    before = flags(model)
    x = torch.randn(2, 4, dtype=DTYPE)
    attribute(model, rule, x)
    project_units(model, "fc2", x, [Unit(0, 1), Unit(1, 2)], rule=rule)
    assert hooks_left(model) == [] and flags(model) == before
    model.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        attribute(model, rule, x)
    with pytest.raises(RuntimeError, match="boom"):
        project_units(model, "fc2", x, [Unit(0, 1)], rule=rule)
    with pytest.raises(RuntimeError, match="boom"), relu_rule(model, rule):
        model(x)
    assert hooks_left(model) == [] and flags(model) == before
    assert model.training and not model.fc1.training
