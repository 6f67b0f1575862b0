"""zoo: architectures, registry, datasets, training, evaluation and ONNX export.

Importing `zoo` is cheap (no torch): the registry is plain data and `build_model` imports torch
when it is called. The models on offer are registered in `cnnzoo.zoo.catalogue`.
"""

from cnnzoo.zoo import catalogue as catalogue  # registers the zoo's entries
from cnnzoo.zoo.preprocess import Preprocess as Preprocess
from cnnzoo.zoo.recipe import Recipe as Recipe
from cnnzoo.zoo.registry import ZooEntry as ZooEntry
from cnnzoo.zoo.registry import build_model as build_model
from cnnzoo.zoo.registry import get_entry as get_entry
from cnnzoo.zoo.registry import list_models as list_models
from cnnzoo.zoo.registry import register_model as register_model

__all__ = [
    "Preprocess",
    "Recipe",
    "ZooEntry",
    "build_model",
    "get_entry",
    "list_models",
    "register_model",
]
