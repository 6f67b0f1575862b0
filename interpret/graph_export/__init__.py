"""Explanation models in a model repository: `cnnzoo explain-export` builds them from a
classifier's model.onnx alone (`writer`), and `cnnzoo export` writes them beside each classifier
it exports, with parity figures against the PyTorch implementation (`parity`).

The graphs themselves come from `cnnzoo.interpret.graphs` (torch-free); this package adds the
repository layout (`cnnzoo.zoo.repository`), so it lives beside it rather than inside it.
"""
