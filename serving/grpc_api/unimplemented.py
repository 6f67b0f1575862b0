"""RPCs a servicer leaves out answer UNIMPLEMENTED, naming the RPC and what to use instead.

grpc's generated base classes answer a missing method with "Method not implemented!" and log
an ERROR traceback for every call, so any client could flood the log. `answer_unimplemented`
replaces each method a servicer does not define with a handler that aborts with a message a
person can act on and logs one WARNING line per RPC name for the life of the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor

__all__ = ["answer_unimplemented"]

log = logging.getLogger(__name__)

Servicer = TypeVar("Servicer", bound=type)

_warned: set[str] = set()


def answer_unimplemented(
    service: ServiceDescriptor, instead: Mapping[str, str], default: str
) -> Callable[[Servicer], Servicer]:
    """Class decorator: every method of `service` (a protobuf ServiceDescriptor) that the
    class does not define itself answers UNIMPLEMENTED.

    Args:
        service: the service descriptor whose methods the class serves.
        instead: per RPC name, what a client can do instead (ends the message).
        default: the advice for an RPC not in `instead`.
    """

    def decorate(cls: Servicer) -> Servicer:
        for method in service.methods:
            if _defined_by(cls, method.name):
                continue
            full_name = f"{service.full_name}/{method.name}"
            message = (
                f"{full_name} is not implemented by this server; "
                f"{instead.get(method.name, default)}"
            )
            setattr(cls, method.name, _unimplemented(full_name, message))
        return cls

    return decorate


def _defined_by(cls: type, name: str) -> bool:
    """True if `cls` or a base other than grpc's generated servicer defines `name`."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return not klass.__module__.endswith("_pb2_grpc")
    return False


def _unimplemented(full_name: str, message: str) -> Callable[..., Any]:
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if full_name not in _warned:
            _warned.add(full_name)
            log.warning(
                "a client called %s, which is not implemented (answered UNIMPLEMENTED; "
                "logged once)",
                full_name,
            )
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    handler.__name__ = full_name.rsplit("/", 1)[1]
    return handler
