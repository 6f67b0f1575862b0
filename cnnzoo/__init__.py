"""cnnzoo: train, serve and understand convolutional image classifiers."""

__version__ = "0.1.0"
