"""Tiny hand-weighted models for the interpretability tests (float64).

Each has an `inplace` switch where ReLUs are involved, so one test can compare separate, shared
and in-place ReLU modules. Expected values in the tests are worked out by hand from the weights
written here, never read back from the implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DTYPE = torch.float64


class OneConv(nn.Module):
    """Captum's `BasicModel_ConvNet_One_Conv`: conv 1->2 3x3 (all ones, biases -50/-75), ReLU,
    linear 8->4 (rows [1,1,1,1,1,-1,-1,-1]), ReLU. Input arange(16) as 4x4."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, 1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.fc1 = nn.Linear(8, 4)
        self.relu2 = nn.ReLU(inplace=inplace)
        with torch.no_grad():
            self.conv1.weight.fill_(1.0)
            self.conv1.bias.copy_(torch.tensor([-50.0, -75.0]))
            self.fc1.weight.copy_(torch.cat([torch.ones(4, 5), -torch.ones(4, 3)], dim=1))
            self.fc1.bias.zero_()
        self.to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.fc1(self.relu1(self.conv1(x)).view(-1, 8)))


class OneHidden(nn.Module):
    """f(x) = v . relu(W x + b) with given W [H, D], b [H], v [H]."""

    def __init__(
        self, W: list[list[float]], b: list[float], v: list[float], inplace: bool = False
    ) -> None:
        super().__init__()
        self.hidden = nn.Linear(len(W[0]), len(W))
        self.relu = nn.ReLU(inplace=inplace)
        self.out = nn.Linear(len(W), 1, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor(W))
            self.hidden.bias.copy_(torch.tensor(b))
            self.out.weight.copy_(torch.tensor([v]))
        self.to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.hidden(x)))


class NoRelu(nn.Module):
    """Conv, eval BatchNorm (non-trivial statistics), max-pool, avg-pool and linear; no ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(3 * 2 * 2, 4)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.tensor([0.5, -0.2, 0.1]))
            self.bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
            self.bn.weight.copy_(torch.tensor([1.5, -0.7, 0.9]))
            self.bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
        self.to(DTYPE).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avg(self.pool(self.bn(self.conv(x)))).flatten(1))


class ConvNet(nn.Module):
    """conv 1->3 3x3, ReLU, [max-pool 2], conv 3->4 3x3, ReLU, linear -> 3 (input 1x8x8, or
    1x10x10 with the pool).

    Args:
        pool: include the max-pool.
        bias: give the convolutions and the linear layer biases.
        inplace / shared: ReLU flavour (shared: one module for both ReLUs).
    """

    def __init__(
        self, pool: bool = False, bias: bool = True, inplace: bool = False, shared: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, bias=bias)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.conv2 = nn.Conv2d(3, 4, 3, bias=bias)
        self.relu2 = self.relu1 if shared else nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(4 * 4 * 4 if not pool else 4 * 2 * 2, 3, bias=bias)
        self.to(DTYPE)

    @staticmethod
    def inputs(n: int, pool: bool = False) -> torch.Tensor:
        """A random batch that fits: 1x8x8 without pooling, 1x10x10 with."""
        side = 10 if pool else 8
        return torch.randn(n, 1, side, side, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        return self.fc(self.relu2(self.conv2(x)).flatten(1))


class ParallelBranches(nn.Module):
    """Two linear branches computed first, then each through a ReLU, then summed with weights
    2 and -1: with one shared ReLU module the two ReLU calls' backward passes interleave."""

    def __init__(self, shared: bool = False, inplace: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(4, 5)
        self.out = nn.Linear(5, 3)
        self.relu_a = nn.ReLU(inplace=inplace)
        self.relu_b = self.relu_a if shared else nn.ReLU(inplace=inplace)
        self.to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ha, hb = self.a(x), self.b(x)
        return self.out(2 * self.relu_a(ha) - self.relu_b(hb))


class FunctionalRelu(nn.Module):
    """Uses a functional ReLU spelling: "F.relu", "torch.relu" or "Tensor.relu"."""

    def __init__(self, spelling: str = "F.relu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)
        self.spelling = spelling
        self.to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.spelling == "F.relu":
            h = F.relu(h)
        elif self.spelling == "torch.relu":
            h = torch.relu(h)
        else:
            h = h.relu()
        return self.fc2(h)


class Scaled(nn.Module):
    """`model`'s output times `c` (scales every backward seed by c)."""

    def __init__(self, model: nn.Module, c: float) -> None:
        super().__init__()
        self.model = model
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.c


class Boom(nn.Module):
    """A ReLU net whose forward raises after its first ReLU when `armed`."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(5, 3)
        self.armed = False
        self.to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.fc1(x))
        if self.armed:
            raise RuntimeError("boom")
        return self.fc2(h)


def hooks_left(model: nn.Module) -> list[str]:
    """Names of modules that still carry any hook or a patched forward."""
    found = []
    for name, module in model.named_modules():
        if (
            "forward" in module.__dict__
            or module._forward_hooks
            or module._forward_pre_hooks
            or module._backward_hooks
            or getattr(module, "_backward_pre_hooks", None)
        ):
            found.append(name or "<root>")
    return found


def flags(model: nn.Module) -> tuple[list[bool], list[bool], list[bool]]:
    """(training per module, requires_grad per parameter, inplace per ReLU)."""
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)],
    )


def separate_relus(model: nn.Module) -> torch.fx.GraphModule:
    """A `torch.fx` copy of `model` in which every call of a reused ReLU module gets its own
    non-inplace `nn.ReLU` (the "separate modules" reference for reuse tests)."""
    graph = torch.fx.symbolic_trace(model)
    count = 0
    for node in graph.graph.nodes:
        if node.op != "call_module" or not isinstance(graph.get_submodule(node.target), nn.ReLU):
            continue
        count += 1
        name = f"separate_relu_{count}"
        graph.add_submodule(name, nn.ReLU(inplace=False))
        node.target = name
    graph.delete_all_unused_submodules()
    graph.recompile()
    graph.eval()
    return graph


def lenet_stack() -> nn.Sequential:
    """conv5-pool2-conv5-pool2 (LeNet-5's C1-S2-C3-S4)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ).to(DTYPE)


def slim_resnet50(width: int = 4) -> nn.Sequential:
    """ResNet-50 laid out as TF-slim's resnet_v1_50 (the google-research receptive-field tables):
    each of the first three stages subsamples in its *last* unit's 3x3 convolution. Channels are
    `width`/64 of the real ones; receptive fields do not depend on width."""
    from torchvision.models.resnet import Bottleneck

    layers: list[nn.Module] = [
        nn.Conv2d(3, 16 * width // 4, 7, 2, 3, bias=False),
        nn.BatchNorm2d(16 * width // 4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    inplanes = 16 * width // 4
    for stage, (planes, blocks) in enumerate(
        [(width, 3), (2 * width, 4), (4 * width, 6), (8 * width, 3)]
    ):
        for unit in range(blocks):
            stride = 2 if unit == blocks - 1 and stage < 3 else 1
            downsample = None
            if stride != 1 or inplanes != planes * 4:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * 4),
                )
            layers.append(Bottleneck(inplanes, planes, stride, downsample))
            inplanes = planes * 4
    return nn.Sequential(*layers).to(DTYPE).eval()


class OtherActivation(nn.Module):
    """linear 4->5, an activation other than ReLU (a module, or a function when `functional`),
    linear 5->3."""

    def __init__(self, activation: nn.Module, functional: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.act = activation
        self.fc2 = nn.Linear(5, 3)
        self.functional = functional
        self.to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = F.gelu(h) if self.functional else self.act(h)
        return self.fc2(h)


def gelu_lenet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """LeNet-5 with `nn.GELU` modules where it has ReLUs: a model the ReLU rules must refuse
    (built as an architecture of the zoo in the job tests)."""
    from cnnzoo.zoo.lenet import LeNet5

    model = LeNet5(num_classes=num_classes, in_channels=in_channels)
    for parent in (model.features, model.classifier):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.GELU())
    return model
