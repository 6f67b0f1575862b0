"""Appending nodes and constants to the explanation graph under names nothing else uses."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GraphBuilder", "numpy_type"]

_NUMPY = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64,
    TensorProto.BOOL: np.bool_,
}


def numpy_type(dtype: int) -> type:
    return _NUMPY[dtype]


class GraphBuilder:
    """Nodes and initializers for a graph, every new name unique.

    Args:
        taken: names already in use (the classifier's tensors, the graph's inputs/outputs).
        prefix: what new names start with.
    """

    def __init__(self, taken: set[str], prefix: str = "xg") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = set(taken)
        self._prefix = prefix
        self._count = 0
        self._constants: dict[tuple[Any, ...], str] = {}

    def fresh(self, hint: str) -> str:
        """A new unique name built from `hint`."""
        while True:
            self._count += 1
            name = f"{self._prefix}/{hint}_{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def add(self, node: onnx.NodeProto) -> None:
        """Append an existing node (a copy of the classifier's) as it is."""
        self._taken.update(node.output)
        self.nodes.append(node)

    def op(
        self,
        op_type: str,
        inputs: list[str],
        outputs: int | list[str] = 1,
        hint: str | None = None,
        **attrs: Any,
    ) -> Any:
        """Append a node; returns its output name (or the list, for several outputs)."""
        hint = hint or op_type.lower()
        names = [self.fresh(hint) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        node = helper.make_node(op_type, inputs, names, name=self.fresh(f"{hint}.node"), **attrs)
        self.nodes.append(node)
        return names[0] if len(names) == 1 else names

    def const(
        self, value: np.ndarray | float | int, dtype: int | None = None, hint: str = "c"
    ) -> str:
        """An initializer holding `value` (small ones shared between uses)."""
        array = np.asarray(value)
        if dtype is not None:
            array = array.astype(numpy_type(dtype))
        key = None
        if array.size <= 64:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._constants:
                return self._constants[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        if key is not None:
            self._constants[key] = name
        return name

    def ints(self, values: list[int] | tuple[int, ...]) -> str:
        """An INT64 vector constant."""
        return self.const(np.array(list(values), dtype=np.int64), hint="i")
