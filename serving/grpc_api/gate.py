"""The gRPC port's gate: who is calling, and a place in the call queue for the calls that run
models.

Always installed (`cnnzoo.serving.server`); it wraps only the RPCs that need it, so the others
pay one dictionary lookup:
- ModelInfer, Classify and Explain wait for a place in the server's `CallQueue` (a burst over
  `--max-concurrent-requests` waits instead of being refused; see `cnnzoo.serving.call_queue`);
- those, ModelStreamInfer and the system shared-memory RPCs record their caller
  (`cnnzoo.serving.peers.CALLER`), which the shared-memory regions check.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc

from cnnzoo.errors import CnnzooError
from cnnzoo.serving.call_queue import CallQueue
from cnnzoo.serving.grpc_api.interceptors import Context, Continuation, Handler
from cnnzoo.serving.grpc_api.status import message_for, status_for
from cnnzoo.serving.peers import CALLER, Caller, caller_from_grpc_peer

__all__ = ["GateInterceptor"]

_INFERENCE = "/inference.GRPCInferenceService/"
_QUEUED = frozenset(
    (_INFERENCE + "ModelInfer", "/cnnzoo.v1.Zoo/Classify", "/cnnzoo.v1.Zoo/Explain")
)
_CALLER_ONLY = frozenset(
    (
        _INFERENCE + "ModelStreamInfer",
        *(
            f"{_INFERENCE}SystemSharedMemory{action}"
            for action in ("Register", "Status", "Unregister")
        ),
    )
)


class GateInterceptor(grpc.aio.ServerInterceptor):
    """See the module docstring. `port` is set once the server is bound."""

    def __init__(self, queue: CallQueue, host: str) -> None:
        self.queue = queue
        self.host = host
        self.port = 0
        # Wrapped handlers by the identity of the handler they wrap (a fixed set).
        self._wrapped: dict[int, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or (method not in _QUEUED and method not in _CALLER_ONLY):
            return handler
        cached = self._wrapped.get(id(handler))
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(handler, queued=method in _QUEUED))
            self._wrapped[id(handler)] = cached
        return cached[1]

    def _wrap(self, handler: Handler, *, queued: bool) -> Handler:
        caller_of = self._caller
        queue = self.queue

        if handler.request_streaming and handler.response_streaming:
            inner_stream = cast(Callable[..., Any], handler.stream_stream)

            async def stream(requests: Any, context: Context) -> Any:
                token = CALLER.set(caller_of(context))
                try:
                    result = inner_stream(requests, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    else:
                        await result
                finally:
                    CALLER.reset(token)

            return grpc.stream_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        inner = cast(Callable[..., Awaitable[Any]], handler.unary_unary)

        async def unary(request: Any, context: Context) -> Any:
            token = CALLER.set(caller_of(context))
            try:
                if not queued:
                    return await inner(request, context)
                remaining = context.time_remaining()
                try:
                    await queue.enter(None if remaining is None else time.monotonic() + remaining)
                except CnnzooError as err:
                    await context.abort(status_for(err), message_for(err))
                try:
                    return await inner(request, context)
                finally:
                    queue.leave()
            finally:
                CALLER.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _caller(self, context: Context) -> Caller | None:
        return caller_from_grpc_peer(context.peer() or "", self.host, self.port)
