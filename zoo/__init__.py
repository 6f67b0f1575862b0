"""zoo: architectures, registry, datasets, training, evaluation and ONNX export."""
