"""gRPC server interceptors: restricted API groups and the access log.

The server installs them only when they are asked for (`--grpc-restricted-protocol`,
`--access-log`): a server without them runs no interceptor at all, so the unary ModelInfer path
pays nothing. With them, a call costs one `intercept_service` step, a dictionary lookup and a
digest comparison (restrictions), or one wrapped call and a queued JSON line (access log).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from cnnzoo.protos import zoo_pb2
from cnnzoo.serving.access_log import AccessLog
from cnnzoo.serving.security import RestrictedProtocols

__all__ = ["AccessLogInterceptor", "RestrictedProtocolInterceptor"]

# grpc's handler type is generic only in its stubs: these aliases are strings for that reason.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


def _zoo_model_fields() -> dict[str, tuple[str, str]]:
    """cnnzoo.v1's requests name their model in `model` and its version in `version`: every
    RPC that follows the convention is logged with them, a new one included."""
    fields: dict[str, tuple[str, str]] = {}
    for method in zoo_pb2.DESCRIPTOR.services_by_name["Zoo"].methods:
        names = method.input_type.fields_by_name
        if "model" in names:
            fields[method.input_type.full_name] = ("model", "version" if "version" in names else "")
    return fields


# Request message -> the fields naming the model and version it is about.
_MODEL_FIELDS = {
    "inference.ModelInferRequest": ("model_name", "model_version"),
    "inference.ModelReadyRequest": ("name", "version"),
    "inference.ModelMetadataRequest": ("name", "version"),
    "inference.ModelConfigRequest": ("name", "version"),
    "inference.ModelStatisticsRequest": ("name", "version"),
    "inference.RepositoryModelLoadRequest": ("model_name", ""),
    "inference.RepositoryModelUnloadRequest": ("model_name", ""),
    **_zoo_model_fields(),
}


def _handler_like(handler: Handler, behavior: Callable[..., Any]) -> Handler:
    """A handler of the same kind and (de)serializers as `handler`, running `behavior`."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _behavior(handler: Handler) -> Callable[..., Any]:
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    if behavior is None:
        raise ValueError(f"a gRPC method handler without a behavior: {handler!r}")
    return behavior


class RestrictedProtocolInterceptor(grpc.aio.ServerInterceptor):
    """Answers calls to a restricted group without its header as Triton does (UNAVAILABLE)."""

    def __init__(self, protocols: RestrictedProtocols) -> None:
        self._protocols = protocols
        self._refusals: dict[str, Handler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        restriction = self._protocols.for_method(method)
        if restriction is None or restriction.allows(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        refusal = self._refusals.get(method)
        if refusal is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            message = restriction.refusal

            async def refuse(request_or_iterator: Any, context: Context) -> None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, message)

            refusal = self._refusals[method] = _handler_like(handler, refuse)
        return refusal


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    """Writes one access line per call (see `cnnzoo.serving.access_log`); `client_names`: the
    server asks for client certificates, so lines name them (reading them costs a little)."""

    def __init__(self, log: AccessLog, *, client_names: bool = False) -> None:
        self._log = log
        self._client_names = client_names
        # Wrapped handlers by the identity of the handler they wrap (a server has a fixed set of
        # handlers; keyed by RPC name, it would grow with every name a client invents).
        self._wrapped: dict[int, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # no such RPC: grpc answers UNIMPLEMENTED, unlogged
            return None
        cached = self._wrapped.get(id(handler))
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(handler_call_details.method, handler))
            self._wrapped[id(handler)] = cached
        return cached[1]

    def _wrap(self, method: str, handler: Handler) -> Handler:
        inner = _behavior(handler)
        write = self._write

        if handler.response_streaming:

            async def stream(request: Any, context: Context) -> Any:
                started, status = time.perf_counter(), "UNKNOWN"
                try:
                    result = inner(request, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    else:
                        await result
                    status = _status(context, None)
                except BaseException as err:
                    status = _status(context, err)
                    raise
                finally:
                    write(method, context, request, status, started)

            return _handler_like(handler, stream)

        async def unary(request: Any, context: Context) -> Any:
            started, status = time.perf_counter(), "UNKNOWN"
            try:
                response = await inner(request, context)
                status = _status(context, None)
                return response
            except BaseException as err:
                status = _status(context, err)
                raise
            finally:
                write(method, context, request, status, started)

        return _handler_like(handler, unary)

    def _write(
        self,
        method: str,
        context: Context,
        request: Any,
        status: str,
        started: float,
    ) -> None:
        model = version = ""
        fields = _MODEL_FIELDS.get(_message_name(request))
        if fields is not None:
            model = getattr(request, fields[0])
            version = getattr(request, fields[1]) if fields[1] else ""
        self._log.write(
            peer=context.peer() or "",
            client=_client_name(context) if self._client_names else "",
            rpc=method,
            model=model,
            version=version,
            status=status,
            latency_s=time.perf_counter() - started,
        )


def _message_name(request: Any) -> str:
    descriptor = getattr(request, "DESCRIPTOR", None)  # a stream's requests: an iterator
    return descriptor.full_name if descriptor is not None else ""


def _status(context: Context, err: BaseException | None) -> str:
    """The status a call ended with: the one set or aborted with, else from the exception."""
    code: object = context.code()  # None until a code is set (grpc's stubs leave that out)
    if isinstance(code, grpc.StatusCode):
        return code.name
    if err is None:
        return "OK"
    if isinstance(err, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


def _client_name(context: Context) -> str:
    """The common name of the caller's TLS certificate (mutual TLS), else ""."""
    names = list(context.auth_context().get("x509_common_name") or ())
    return names[0].decode("utf-8", "replace") if names else ""
