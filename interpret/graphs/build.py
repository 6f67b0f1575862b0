"""`build_explanation`: a classifier's ONNX graph in, an ONNX graph out that computes the forward
pass and one explanation method in a single run.

The explanation graph keeps the classifier's image input (name, type, dims) and adds, every one
with the batch axis so Triton-style dynamic batching works:

- class methods: `target` INT64 `[N, 1]` (negative: the predicted class); grad-cam and
  guided-grad-cam also `layer` INT64 `[N, 1]` (an index into the `layers` metadata; negative:
  the default layer);
- unit methods: `layer`, `channel` INT64 `[N, 1]` and `position` INT64 `[N, 2]` (y, x in the
  layer's map; negative: the channel's strongest position in this image, the first in row-major
  order on ties).

Outputs: `attribution` FP32 (`[N, C, H, W]` per input channel; grad-cam and occlusion
`[N, 1, H, W]`), `logits` FP32 `[N, K]` (the classifier's output) and `target_used` INT64
`[N, 1]` (class methods) or `unit_position` INT64 `[N, 2]` and `unit_activation` FP32 `[N, 1]`
(unit methods).

Out-of-range requests cannot raise inside a graph, so they give defined results the caller can
check (the server validates against the metadata first): a target >= K, a layer index past the
list, a channel or position outside the layer give an all-zero map; unit methods then report
`unit_position` (-1, -1) and `unit_activation` NaN.

The methods follow the PyTorch implementations (`cnnzoo.interpret`) and Captum exactly:
integrated gradients uses Captum's defaults (Gauss-Legendre nodes and weights as constants,
`steps` = 50, the scaled copies of each image as one batch `[steps * N, ...]`, step-major, from a
constant `baseline`, default 0); Grad-CAM is Captum's `LayerGradCam` (mean gradient per channel,
weighted sum, ReLU) upsampled bilinearly (`Resize`, half-pixel, as `F.interpolate(...,
"bilinear")`); occlusion is Captum's `Occlusion` on softmax probabilities with a zero square,
all positions of the square as one batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from cnnzoo.errors import InvalidInput
from cnnzoo.interpret.graphs.backward import Backward, Forward, emit_forward
from cnnzoo.interpret.graphs.builder import GraphBuilder, numpy_type
from cnnzoo.interpret.graphs.classifier import RESERVED_NAMES, Classifier
from cnnzoo.interpret.graphs.fields import field_json, receptive_fields
from cnnzoo.interpret.graphs.layers import Layer, LayerTable, layer_table
from cnnzoo.interpret.graphs.methods import (
    DECONVNET,
    GRADIENT,
    GUIDED,
    GraphMethod,
    get_graph_method,
    resolve_settings,
)
from cnnzoo.interpret.graphs.occlusion import check_window, default_window, occlusion_masks

__all__ = ["MAX_STEPS", "build_explanation", "gauss_legendre"]

MAX_STEPS = 1024  # integrated gradients: scaled copies per image
_INT64 = TensorProto.INT64
_FLOAT = TensorProto.FLOAT


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Captum's Gauss-Legendre alphas in [0, 1] and step sizes (weights summing to 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (1 + nodes), 0.5 * weights


def build_explanation(classifier: onnx.ModelProto, method: str, **settings: Any) -> onnx.ModelProto:
    """The explanation graph of `classifier` for `method` (see the module doc).

    Args:
        classifier: the classifier's ONNX model (not modified).
        method: one of `GRAPH_METHODS`.
        **settings: `explains` (the classifier's name, for the metadata), `classifier_sha256`
            (sha256 of the classifier's model.onnx bytes; default: of `classifier` serialised);
            integrated-gradients: `steps` (50), `baseline` (0.0); occlusion: `window`, `stride`
            (default: `default_window` of the image's shorter side); activations: `layers`
            (default every layer); grad-cam, guided-grad-cam:
            `layers` (names to offer; default every spatial layer), `default_layer` (a name;
            default the last spatial layer); unit methods: `layers` (default every layer).

    Raises:
        InvalidInput: an unknown method or setting, or a bad setting value.
        UnsupportedModel: the graph has an operator the transformation does not cover, a rule
            that cannot apply to it (deconvnet or guided backprop through another activation
            than ReLU) or a shape it cannot follow; the message names the node, op and why.
        LayerNotFound: a layer name the graph does not have (lists the valid names).
    """
    spec = get_graph_method(method)
    values = resolve_settings(spec, settings)
    cls = Classifier(classifier)
    digest = (
        values.pop("classifier_sha256")
        or hashlib.sha256(classifier.SerializeToString()).hexdigest()
    )
    return _Explanation(cls, spec, values, digest).build()


class _Explanation:
    def __init__(
        self, cls: Classifier, spec: GraphMethod, settings: dict[str, Any], digest: str
    ) -> None:
        self.cls = cls
        self.spec = spec
        self.settings = settings
        self.b = GraphBuilder(cls.tensor_names() | RESERVED_NAMES)
        self.inputs: list[onnx.ValueInfoProto] = [
            _value_info(cls, cls.image, cls.image_info.dtype, cls.image_info.sizes)
        ]
        self.outputs: list[onnx.ValueInfoProto] = []
        self.warnings: list[str] = []
        self.metadata: dict[str, str] = {
            "cnnzoo_explanation": spec.name,
            "classifier_sha256": digest,
            "rule": spec.rule or "",
            "attribution_of": _explained(cls),
            "score": "the logit before the final softmax"
            if cls.head and cls.score != cls.output
            else "the classifier's output",
        }
        if settings.get("explains"):
            self.metadata["explains"] = str(settings["explains"])
        self.layers: tuple[Layer, ...] = ()
        self.default_layer = -1

    # -- inputs and outputs --------------------------------------------------------------------

    def input(self, name: str, width: int = 1) -> str:
        self.inputs.append(_value_info(self.cls, name, _INT64, (width,)))
        return name

    def output(
        self, name: str, tensor: str, sizes: tuple[int, ...], *, source: int, dtype: int = _FLOAT
    ) -> None:
        """Declare output `name` [N, *sizes] of type `dtype`, computed by `tensor` (of type
        `source`)."""
        if tensor != name:
            if source == dtype:
                self.b.op("Identity", [tensor], outputs=[name])
            else:
                self.b.op("Cast", [tensor], outputs=[name], to=dtype)
        self.outputs.append(_value_info(self.cls, name, dtype, sizes))

    # -- shared pieces -------------------------------------------------------------------------

    def forward(self, *, switches: bool) -> Forward:
        main = emit_forward(self.cls, self.b, switches=switches)
        logits = self.cls.infos[self.cls.output]
        self.output("logits", main[self.cls.output], logits.sizes, source=logits.dtype)
        return main

    def targets(self, main: Forward) -> tuple[str, str]:
        """(`target_used` [N, 1], the one-hot seed [N, K] in the score's type)."""
        b, cls = self.b, self.cls
        target = self.input("target")
        score = main[cls.score]
        info = cls.infos[cls.score]
        predicted = b.op("ArgMax", [score], axis=1, keepdims=1, hint="predicted")
        negative = b.op("Less", [target, b.const(np.int64(0))])
        used = b.op("Where", [negative, predicted, target], outputs=["target_used"])
        self.outputs.append(_value_info(cls, "target_used", _INT64, (1,)))
        classes = b.const(np.arange(info.shape[1], dtype=np.int64)[None], hint="classes")
        onehot = b.op("Cast", [b.op("Equal", [classes, used])], to=info.dtype, hint="seed")
        return used, onehot

    def attribution(self, tensor: str, sizes: tuple[int, ...], source: int | None = None) -> None:
        """The `attribution` output (by default of the explained tensor's type)."""
        dtype = self.cls.infos[self.cls.explained].dtype if source is None else source
        self.output("attribution", tensor, sizes, source=dtype)

    def backward(self, forward: Forward, rule: str) -> Backward:
        return Backward(self.cls, self.b, forward, rule, self.spec.name)

    def note_independence(self, passes: list[Backward]) -> None:
        """The warnings of `cnnzoo.interpret.rules.input_independence` for these passes."""
        if any(p.saw_maxpool for p in passes):
            return
        name = self.settings.get("explains") or "this model"
        rules = {p.rule for p in passes}
        if DECONVNET in rules:
            self.warnings.append(
                f"deconvnet maps of {name} cannot depend on the input: the model has no "
                "max-pooling, so the map is the same for every image (it varies only with the "
                "class or unit); read it as the pattern the unit is tuned to, or use guided "
                "backprop"
            )
        elif not any(p.saw_activation for p in passes) and self.spec.kind != "occlusion":
            self.warnings.append(
                f"{self.spec.rule} maps of {name} cannot depend on the input: the model has no "
                "activations and no max-pooling, so it is linear"
            )

    def choose_layers(self, table: LayerTable, spatial_only: bool) -> None:
        """The layers this graph offers (setting `layers`, default all that fit) and the
        default one (setting `default_layer`, default the last spatial layer)."""
        offered = tuple(
            layer
            for layer in table.layers
            if layer.spatial or (not spatial_only and len(layer.shape) == 1)
        )
        names = self.settings.get("layers")
        if names is not None:
            if isinstance(names, str) or not names:
                raise InvalidInput("layers must be a non-empty list of layer names")
            picked = []
            for name in names:
                index = table.find(str(name), offered)
                if offered[index] not in picked:
                    picked.append(offered[index])
            offered = tuple(picked)
        if not offered:
            raise InvalidInput(f"{self.spec.name}: the model offers no layer for it")
        default = self.settings.get("default_layer")
        self.layers = offered
        if default is not None:
            self.default_layer = table.find(str(default), offered)
        elif any(layer.spatial for layer in offered):
            self.default_layer = table.default_cam(offered)
        else:  # unit projections of flat layers only: the last one
            self.default_layer = len(offered) - 1
        self.metadata["layers"] = json.dumps([layer.to_json() for layer in offered])
        self.metadata["default_layer"] = offered[self.default_layer].name

    def layer_index(self) -> str:
        """The `layer` input with negative values replaced by the default layer's index."""
        b = self.b
        layer = self.input("layer")
        negative = b.op("Less", [layer, b.const(np.int64(0))])
        return b.op(
            "Where", [negative, b.const(np.int64(self.default_layer)), layer], hint="layer_used"
        )

    def by_tensor(self) -> dict[str, list[int]]:
        """The offered layers' indices per tensor (a container and its last child share one)."""
        groups: dict[str, list[int]] = {}
        for i, layer in enumerate(self.layers):
            groups.setdefault(layer.tensor, []).append(i)
        return groups

    def selected(self, index: str, indices: list[int]) -> str:
        """BOOL [N, 1]: the rows whose layer index is one of `indices`."""
        b = self.b
        return _any(b, [b.op("Equal", [index, b.const(np.int64(i))]) for i in indices])

    # -- the methods ---------------------------------------------------------------------------

    def build(self) -> onnx.ModelProto:
        kind, name = self.spec.kind, self.spec.name
        if kind == "occlusion":
            self.build_occlusion()
        elif kind == "unit":
            self.build_units()
        elif kind == "activations":
            self.build_activations()
        elif name == "integrated-gradients":
            self.build_integrated_gradients()
        elif name in ("grad-cam", "guided-grad-cam"):
            self.build_grad_cam()
        else:
            self.build_rule_map()
        if "layers" not in self.metadata:
            self.metadata["layers"] = "[]"
            self.metadata["default_layer"] = ""
        self.metadata["warnings"] = json.dumps(self.warnings)
        return self.assemble()

    def build_rule_map(self) -> None:
        """gradient, deconvnet, guided-backprop, input-x-gradient."""
        cls = self.cls
        main = self.forward(switches=True)
        _, seed = self.targets(main)
        passes = self.backward(main, self.spec.rule or GRADIENT)
        grad = passes.run({cls.score: seed}, [cls.explained])[cls.explained]
        grad = grad or self.zeros_like(main[cls.explained], cls.explained)
        if self.spec.name == "input-x-gradient":
            grad = self.b.op("Mul", [main[cls.explained], grad], hint="input_x_gradient")
        self.note_independence([passes])
        self.attribution(grad, cls.image_info.sizes)

    def build_integrated_gradients(self) -> None:
        b, cls = self.b, self.cls
        steps, baseline = self.settings["steps"], self.settings["baseline"]
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise InvalidInput(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
        try:
            baseline = float(baseline)
        except (TypeError, ValueError):
            raise InvalidInput(f"baseline must be a number, got {baseline!r}") from None
        if not np.isfinite(baseline):
            raise InvalidInput(f"baseline must be finite, got {baseline}")
        self.metadata.update(steps=str(steps), baseline=repr(baseline), method="gausslegendre")
        main = self.forward(switches=False)
        _, seed = self.targets(main)
        info = cls.infos[cls.explained]
        dtype = info.dtype
        alphas, weights = gauss_legendre(steps)
        x = main[cls.explained]
        base = b.const(np.array(baseline), dtype, hint="baseline")
        difference = b.op("Sub", [x, base]) if baseline else x
        ones = [1] * info.rank
        # Captum: cat([baseline + alpha * (input - baseline) for alpha in alphas]), step-major
        scaled = b.op(
            "Mul",
            [
                b.const(alphas.reshape(-1, *ones), dtype, hint="alphas"),
                b.op("Unsqueeze", [difference, b.ints([0])]),
            ],
        )
        if baseline:
            scaled = b.op("Add", [base, scaled])
        batch = b.op("Reshape", [scaled, b.ints([-1, *info.sizes])], hint="ig_batch")
        copy = emit_forward(cls, b, feeds={cls.explained: batch}, hint="ig", switches=True)
        seeds = b.op("Tile", [seed, b.ints([steps, 1])])
        passes = self.backward(copy, GRADIENT)
        grads = passes.run({cls.score: seeds}, [cls.explained])[cls.explained]
        grads = grads or self.zeros_like(batch, cls.explained)
        per_step = b.op("Reshape", [grads, b.ints([steps, -1, *info.sizes])])
        weighted = b.op(
            "Mul", [per_step, b.const(weights.reshape(-1, *ones), dtype, hint="step_sizes")]
        )
        total = b.op("ReduceSum", [weighted, b.ints([0])], keepdims=0)
        self.note_independence([passes])
        self.attribution(b.op("Mul", [total, difference], hint="integrated"), info.sizes)

    def build_grad_cam(self) -> None:
        b, cls = self.b, self.cls
        self.choose_layers(layer_table(cls), spatial_only=True)
        guided = self.spec.name == "guided-grad-cam"
        main = self.forward(switches=True)
        _, seed = self.targets(main)
        index = self.layer_index()
        groups = self.by_tensor()
        passes = self.backward(main, GRADIENT)
        grads = passes.run({cls.score: seed}, list(groups))
        height, width = cls.image_info.sizes[1:]
        by_size: dict[tuple[int, int], list[str]] = {}
        for tensor, indices in groups.items():
            info = cls.infos[tensor]
            activation, grad = main[tensor], grads[tensor]
            if grad is None:
                continue
            weights = b.op("ReduceMean", [grad, b.ints([2, 3])], keepdims=1, hint="cam_weights")
            cam = b.op(
                "Relu",
                [b.op("ReduceSum", [b.op("Mul", [weights, activation]), b.ints([1])], keepdims=1)],
                hint="cam",
            )
            if info.dtype != _FLOAT:
                cam = b.op("Cast", [cam], to=_FLOAT)
            rows = b.op("Reshape", [self.selected(index, indices), b.ints([-1, 1, 1, 1])])
            cam = b.op("Where", [rows, cam, self.zero(_FLOAT)])
            by_size.setdefault(info.shape[2:], []).append(cam)  # type: ignore[arg-type]
        upsampled = []
        for (h, w), cams in by_size.items():
            cam = cams[0] if len(cams) == 1 else b.op("Sum", cams)
            if (h, w) != (height, width):
                cam = b.op(
                    "Resize",
                    [cam, "", "", b.ints([height, width])],
                    hint="cam_up",
                    mode="linear",
                    coordinate_transformation_mode="pytorch_half_pixel",
                    axes=[2, 3],
                )
            upsampled.append(cam)
        if not upsampled:
            raise InvalidInput("Grad-CAM: no offered layer reaches the score")
        cam = upsampled[0] if len(upsampled) == 1 else b.op("Sum", upsampled)
        if not guided:
            self.attribution(cam, (1, height, width), source=_FLOAT)
            return
        guide = self.backward(main, GUIDED)
        grad = guide.run({cls.score: seed}, [cls.explained])[cls.explained]
        grad = grad or self.zeros_like(main[cls.explained], cls.explained)
        if cls.infos[cls.explained].dtype != _FLOAT:
            grad = b.op("Cast", [grad], to=_FLOAT)
        self.note_independence([guide])
        self.attribution(
            b.op("Mul", [grad, cam], hint="guided_cam"), cls.image_info.sizes, source=_FLOAT
        )

    def build_units(self) -> None:
        b, cls = self.b, self.cls
        self.choose_layers(layer_table(cls), spatial_only=False)
        main = self.forward(switches=True)
        index = self.layer_index()
        channel = self.input("channel")
        position = self.input("position", 2)
        y = b.op("Slice", [position, b.ints([0]), b.ints([1]), b.ints([1])], hint="y")
        x = b.op("Slice", [position, b.ints([1]), b.ints([2]), b.ints([1])], hint="x")
        zero = b.const(np.int64(0))
        strongest = b.op("Or", [b.op("Less", [y, zero]), b.op("Less", [x, zero])])
        unit = _UnitRequest(channel, y, x, strongest, zero)
        seeds: dict[str, str] = {}
        positions = b.const(np.array([[-1, -1]], dtype=np.int64))
        activations = b.const(np.array([[np.nan]], dtype=np.float32))
        for tensor, indices in self.by_tensor().items():
            info = cls.infos[tensor]
            rows = self.selected(index, indices)
            seeds[tensor], valid, where, value = self._unit_seed(main[tensor], info, rows, unit)
            positions = b.op("Where", [valid, where, positions])
            if info.dtype != _FLOAT:
                value = b.op("Cast", [value], to=_FLOAT)
            activations = b.op("Where", [valid, value, activations])
        passes = self.backward(main, self.spec.rule or GRADIENT)
        grad = passes.run(seeds, [cls.explained])[cls.explained]
        grad = grad or self.zeros_like(main[cls.explained], cls.explained)
        self.note_independence([passes])
        self.attribution(grad, cls.image_info.sizes)
        positions = b.op(
            "Expand",
            [positions, b.op("Concat", [b.op("Shape", [channel], end=1), b.ints([2])], axis=0)],
        )
        activations = b.op("Expand", [activations, b.op("Shape", [channel])])
        self.output("unit_position", positions, (2,), source=_INT64, dtype=_INT64)
        self.output("unit_activation", activations, (1,), source=_FLOAT)

    def build_activations(self) -> None:
        """One float32 output per layer tensor (named by the outermost layer that holds it, its
        other names recorded as aliases), with the receptive field of its units."""
        cls = self.cls
        self.choose_layers(layer_table(cls), spatial_only=False)
        main = self.forward(switches=False)
        fields = receptive_fields(cls)
        taken = cls.tensor_names() | {"logits"}
        entries = []
        for tensor, indices in self.by_tensor().items():
            names = [self.layers[i].name for i in indices]
            output = names[-1] if names[-1] not in taken or names[-1] == tensor else f"{tensor}:out"
            taken.add(output)
            info = cls.infos[tensor]
            self.output(output, main[tensor], info.sizes, source=info.dtype)
            entries.append(
                {
                    "name": names[-1],
                    "aliases": names[:-1],
                    "output": output,
                    "shape": list(info.sizes),
                    "receptive_field": field_json(fields.get(tensor)),
                }
            )
        self.metadata["activations"] = json.dumps(entries)

    def _unit_seed(
        self, activation: str, info: Any, rows: str, unit: _UnitRequest
    ) -> tuple[str, str, str, str]:
        """One layer's part of a unit graph: the backward seed (1 at the unit of the rows that
        chose this layer, else 0), which rows it is valid for, the unit's position and its
        activation."""
        b = self.b
        sizes = info.sizes
        channels = sizes[0]
        ok_channel = b.op(
            "And",
            [
                b.op("GreaterOrEqual", [unit.channel, unit.zero]),
                b.op("Less", [unit.channel, b.const(np.int64(channels))]),
            ],
        )
        safe_channel = b.op("Clip", [unit.channel, unit.zero, b.const(np.int64(channels - 1))])
        if len(sizes) == 3:
            ok_position, spot, value, where = self._unit_spot(activation, sizes, safe_channel, unit)
        else:
            ok_position = b.const(np.array([[True]]))
            spot = unit.zero
            value = b.op("GatherElements", [activation, safe_channel], axis=1)
            where = b.const(np.array([[0, 0]], dtype=np.int64))
        valid = _all(b, [rows, ok_channel, ok_position])
        shape = [-1, 1] + ([1, 1] if len(sizes) == 3 else [])
        every_channel = np.arange(channels, dtype=np.int64).reshape(1, -1, *[1] * (len(sizes) - 1))
        asked = b.op("Reshape", [unit.channel, b.ints(shape)])
        hit = b.op("Equal", [b.const(every_channel), asked])
        if len(sizes) == 3:
            spots = int(np.prod(sizes[1:]))
            spot_hit = b.op(
                "Equal",
                [
                    b.const(np.arange(spots, dtype=np.int64).reshape(1, 1, *sizes[1:])),
                    b.op("Reshape", [spot, b.ints([-1, 1, 1, 1])]),
                ],
            )
            hit = b.op("And", [hit, spot_hit])
        hit = b.op("And", [hit, b.op("Reshape", [valid, b.ints(shape)])])
        return b.op("Cast", [hit], to=info.dtype, hint="unit_seed"), valid, where, value

    def _unit_spot(
        self, activation: str, sizes: Sequence[int], safe_channel: str, unit: _UnitRequest
    ) -> tuple[str, str, str, str]:
        """Where the unit sits in a spatial layer: whether the asked position is inside the map,
        the flat spot (the channel's strongest for this image when no position was asked), the
        activation there and the spot as (y, x)."""
        b = self.b
        spots = int(np.prod(sizes[1:]))
        width = sizes[2]
        # the channel's map per row, flattened: [N, H*W]
        gather = b.op(
            "Expand",
            [
                b.op("Reshape", [safe_channel, b.ints([-1, 1, 1, 1])]),
                b.op(
                    "Concat",
                    [b.op("Shape", [activation], end=1), b.ints([1, *sizes[1:]])],
                    axis=0,
                ),
            ],
        )
        plane = b.op(
            "Reshape",
            [b.op("GatherElements", [activation, gather], axis=1), b.ints([-1, spots])],
        )
        best = b.op("ArgMax", [plane], axis=1, keepdims=1)
        given = b.op("Add", [b.op("Mul", [unit.y, b.const(np.int64(width))]), unit.x])
        inside = _all(
            b,
            [
                b.op("Less", [unit.y, b.const(np.int64(sizes[1]))]),
                b.op("Less", [unit.x, b.const(np.int64(width))]),
            ],
        )
        ok_position = b.op("Or", [unit.strongest, inside])
        spot = b.op("Where", [unit.strongest, best, given], hint="spot")
        safe_spot = b.op("Clip", [spot, unit.zero, b.const(np.int64(spots - 1))])
        value = b.op("GatherElements", [plane, safe_spot], axis=1)
        where = b.op(
            "Concat",
            [
                b.op("Div", [spot, b.const(np.int64(width))]),
                b.op("Mod", [spot, b.const(np.int64(width))]),
            ],
            axis=1,
        )
        return ok_position, spot, value, where

    def build_occlusion(self) -> None:
        b, cls = self.b, self.cls
        info = cls.infos[cls.explained]
        height, width = info.sizes[1:]
        default = default_window(min(height, width))
        window = self.settings.get("window") or default[0]
        stride = self.settings.get("stride") or default[1]
        for name, value in (("window", window), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"occlusion {name} must be an integer, got {value!r}")
        check_window((height, width), window, stride)
        self.metadata.update(
            window=str(window), stride=str(stride), scores="probability", baseline="0.0"
        )
        masks = occlusion_masks(height, width, window, stride)
        count = masks.shape[0]
        self.metadata["positions"] = str(count)
        main = self.forward(switches=False)
        used, _ = self.targets(main)
        x = main[cls.explained]
        dtype = info.dtype
        keep = b.const((1 - masks).reshape(count, 1, 1, height, width), dtype, hint="keep")
        occluded = b.op("Mul", [b.op("Unsqueeze", [x, b.ints([0])]), keep])
        batch = b.op("Reshape", [occluded, b.ints([-1, *info.sizes])], hint="occluded")
        copy = emit_forward(cls, b, feeds={cls.explained: batch}, hint="occ")
        score_dtype = cls.infos[cls.score].dtype

        def probability(scores: str, targets: str) -> str:
            if score_dtype != _FLOAT:
                scores = b.op("Cast", [scores], to=_FLOAT)
            return b.op("GatherElements", [b.op("Softmax", [scores], axis=1), targets], axis=1)

        valid = b.op("Less", [used, b.const(np.int64(cls.infos[cls.score].shape[1]))])
        safe = b.op("Where", [valid, used, b.const(np.int64(0))])
        before = probability(main[cls.score], safe)  # [N, 1]
        after = probability(copy[cls.score], b.op("Tile", [safe, b.ints([count, 1])]))
        drops = b.op(
            "Sub",
            [
                b.op("Reshape", [before, b.ints([1, -1])]),
                b.op("Reshape", [after, b.ints([count, -1])]),
            ],
        )
        drops = b.op("Where", [b.op("Reshape", [valid, b.ints([1, -1])]), drops, self.zero(_FLOAT)])
        flat = b.const(masks.reshape(count, -1), _FLOAT, hint="masks")
        summed = b.op("MatMul", [b.op("Transpose", [drops], perm=[1, 0]), flat])
        mean = b.op(
            "Div", [summed, b.const(masks.sum(axis=0).reshape(1, -1), _FLOAT, hint="covered")]
        )
        self.attribution(
            b.op("Reshape", [mean, b.ints([-1, 1, height, width])]),
            (1, height, width),
            source=_FLOAT,
        )

    # -- helpers -------------------------------------------------------------------------------

    def zero(self, dtype: int) -> str:
        return self.b.const(np.zeros((), dtype=numpy_type(dtype)), hint="zero")

    def zeros_like(self, tensor: str, classifier_name: str) -> str:
        return self.b.op("Mul", [tensor, self.zero(self.cls.infos[classifier_name].dtype)])

    def assemble(self) -> onnx.ModelProto:
        cls = self.cls
        graph = helper.make_graph(
            self.b.nodes,
            f"{cls.model.graph.name or 'classifier'}.{self.spec.name}",
            self.inputs,
            self.outputs,
            initializer=[*cls.initializers(), *self.b.initializers],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", cls.opset)],
            ir_version=max(cls.model.ir_version, 8),
            producer_name="cnnzoo",
            doc_string=f"{self.spec.name} explanation of "
            f"{self.settings.get('explains') or 'a classifier'}: {self.spec.summary}",
        )
        inherited = {e.key: e.value for e in cls.model.metadata_props}
        helper.set_model_props(model, {**inherited, **self.metadata})
        return model


def _any(b: GraphBuilder, flags: list[str]) -> str:
    out = flags[0]
    for flag in flags[1:]:
        out = b.op("Or", [out, flag])
    return out


class _UnitRequest(NamedTuple):
    """A unit graph's inputs as graph tensor names: the channel, the asked position (y, x), and
    whether the strongest position is wanted instead (y or x negative); `zero`: an INT64 0."""

    channel: str
    y: str
    x: str
    strongest: str
    zero: str


def _all(b: GraphBuilder, flags: list[str]) -> str:
    out = flags[0]
    for flag in flags[1:]:
        out = b.op("And", [out, flag])
    return out


def _explained(cls: Classifier) -> str:
    if cls.explained == cls.image:
        return "input"
    return "the float image after the graph's preprocessing of the integer input"


def _value_info(
    cls: Classifier, name: str, dtype: int, sizes: tuple[int, ...]
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, [cls.batch_dim, *sizes])
