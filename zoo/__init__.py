"""zoo: architectures, registry, datasets, training, evaluation and ONNX export.

Importing `zoo` is cheap (no torch): the registry is plain data and `build_model` imports torch
when it is called.
"""

from cnnzoo.zoo import _entries as _entries  # registers the zoo's entries
from cnnzoo.zoo._builder import build_model as build_model
from cnnzoo.zoo._registry import Recipe as Recipe
from cnnzoo.zoo._registry import ZooEntry as ZooEntry
from cnnzoo.zoo._registry import get_entry as get_entry
from cnnzoo.zoo._registry import list_models as list_models
from cnnzoo.zoo._registry import register_model as register_model
from cnnzoo.zoo.preprocess import Preprocess as Preprocess

__all__ = [
    "Preprocess",
    "Recipe",
    "ZooEntry",
    "build_model",
    "get_entry",
    "list_models",
    "register_model",
]
