"""Errors the serving layer adds to `zoo.errors`.

Each class documents the gRPC status it becomes; `serving.grpc.status` maps them in one place.
"""

from __future__ import annotations

from zoo.errors import CnnzooError, IntegrityError, InvalidInput, NotFound

__all__ = [
    "CnnzooError",
    "DeadlineExceeded",
    "ExecutionProviderError",
    "IntegrityError",
    "InvalidInput",
    "NotFound",
    "ResourceExhausted",
    "Unavailable",
]


class Unavailable(CnnzooError):
    """The server or a model cannot answer now (loading, refused, draining). Status: UNAVAILABLE."""

    exit_code = 6


class ResourceExhausted(CnnzooError):
    """A request is larger than a configured limit. Status: RESOURCE_EXHAUSTED."""

    exit_code = 7


class DeadlineExceeded(CnnzooError):
    """The caller's deadline passed before the answer was ready. Status: DEADLINE_EXCEEDED."""

    exit_code = 8


class ExecutionProviderError(CnnzooError):
    """The requested ONNX Runtime execution provider is unusable (a start-up error)."""

    exit_code = 9
