"""Errors the serving layer adds to `zoo.errors`.

Each class documents the gRPC status it becomes; `serving.grpc_api.status` maps them in one place.
"""

from __future__ import annotations

from zoo.errors import CnnzooError, IntegrityError, InvalidInput, NotFound

__all__ = [
    "CnnzooError",
    "DeadlineExceeded",
    "ExecutionProviderError",
    "IntegrityError",
    "InvalidImage",
    "InvalidInput",
    "NotFound",
    "Unavailable",
]


class Unavailable(CnnzooError):
    """The server or a model cannot answer now (loading, refused, draining). Status: UNAVAILABLE."""

    exit_code = 6


class DeadlineExceeded(CnnzooError):
    """The caller's deadline passed before the answer was ready. Status: DEADLINE_EXCEEDED."""

    exit_code = 8


class ExecutionProviderError(CnnzooError):
    """The requested ONNX Runtime execution provider is unusable (a start-up error)."""

    exit_code = 9


class InvalidImage(InvalidInput):
    """Image number `index` (from 0) of a request is unusable. Status: INVALID_ARGUMENT.

    The index travels to the client in the trailing metadata (`IMAGE_INDEX_METADATA_KEY`), so
    `cnnzoo classify` can name the file instead of its position.
    """

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(f"image {index}: {problem}")
        self.index = index
        self.problem = problem
