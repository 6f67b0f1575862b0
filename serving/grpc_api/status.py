"""Domain errors to gRPC status codes, in one place.

Servicer methods are wrapped with `grpc_errors`: a `CnnzooError` becomes the status code its
class names (`status`) with the error's `reason` as the message; anything else is logged with
its traceback on the server and answered INTERNAL without one. Messages are cut at
`MAX_MESSAGE_CHARS`: a status message travels in a header, and clients refuse headers over
their limit (8 kB by default), which would turn the real status into RESOURCE_EXHAUSTED on the
client.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cnnzoo.errors import CnnzooError, InvalidImage, Unavailable, error_class

__all__ = [
    "IMAGE_INDEX_METADATA_KEY",
    "MAX_MESSAGE_CHARS",
    "error_for",
    "grpc_errors",
    "message_for",
    "status_for",
]

# Trailing metadata naming the unusable image of a request (its index, from 0).
IMAGE_INDEX_METADATA_KEY = "cnnzoo-image-index"

# The longest status message sent (messages quote callers' values through `quoted` already).
MAX_MESSAGE_CHARS = 2000

log = logging.getLogger(__name__)


def status_for(err: CnnzooError) -> grpc.StatusCode:
    """The status code `err`'s class names."""
    return grpc.StatusCode[err.status]


def message_for(err: CnnzooError) -> str:
    """The status message of `err`: its reason, cut to `MAX_MESSAGE_CHARS`."""
    reason = err.reason
    if len(reason) <= MAX_MESSAGE_CHARS:
        return reason
    return reason[: MAX_MESSAGE_CHARS - 20] + f"... ({len(reason)} characters)"


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def grpc_errors(handler: Handler) -> Handler:
    """Wrap an async servicer method so errors become status codes (see the module doc)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except CnnzooError as err:
            trailers: tuple[tuple[str, str], ...] = ()
            if isinstance(err, InvalidImage):
                trailers = ((IMAGE_INDEX_METADATA_KEY, str(err.index)),)
            await context.abort(status_for(err), message_for(err), trailing_metadata=trailers)
        except Exception:
            log.exception("%s failed", handler.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"{handler.__name__} failed inside the server; the server log has the details",
            )

    return wrapper  # type: ignore[return-value]


def error_for(err: grpc.RpcError, target: str) -> CnnzooError:
    """The `CnnzooError` for a failed call (UNAVAILABLE names the server it could not reach;
    an unusable image becomes `InvalidImage` with its index)."""
    code = err.code()
    details = err.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
        return Unavailable(f"cannot reach the server at {target}: {details}")
    index = _image_index(err)
    if code == grpc.StatusCode.INVALID_ARGUMENT and index is not None:
        return InvalidImage(index, details.removeprefix(f"image {index}: "))
    return error_class(code.name)(f"{code.name}: {details}")


def _image_index(err: grpc.RpcError) -> int | None:
    trailers = getattr(err, "trailing_metadata", lambda: None)() or ()
    for key, value in trailers:
        if key == IMAGE_INDEX_METADATA_KEY and str(value).isdigit():
            return int(value)
    return None
